"""Cluster-only behaviour: URLs, slots, node restarts, crash leftovers and their repair.

The backend-independent suite runs on the cluster too (``store_url`` has a ``cluster``
parameter in ``tests/conftest.py``).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from redis.crc import key_slot

from imgsim_lab.store import (
    InvalidURLError,
    NewImage,
    ReadOnlyStoreError,
    StoreAuthError,
    StoreError,
    open_store,
)
from imgsim_lab.store.url import parse_cluster_url, parse_url, redact_url

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def sha(i: int) -> str:
    return hashlib.sha256(f"c{i}".encode()).hexdigest()


def images(n: int, dim: int = 16, start: int = 0) -> tuple[list[NewImage], np.ndarray]:
    vecs = np.random.default_rng(start).standard_normal((n, dim)).astype(np.float32)
    return [NewImage(sha(start + i), f"c{start + i}.jpg", 8, 8, embeddings={"m": vecs[i]})
            for i in range(n)], vecs


@pytest.fixture
def cstore(cluster_url: str, namespace: str):
    s = open_store(cluster_url, namespace)
    s.register_model("m", 16, "v1")
    yield s
    s.flush()
    s.close()


def own_cluster(cluster_servers):
    if cluster_servers is None:
        pytest.skip("kills nodes: needs the cluster the tests start, not $IMGSIM_TEST_CLUSTER_URL")
    return cluster_servers


def assert_complete(store, items, vecs) -> None:
    """Every image has one record, its claim, its embedding, and the counts agree."""
    ids = store.ids_for_hashes([it.sha256 for it in items])
    assert None not in ids and len(set(ids)) == len(items)
    recs = store.get_records(ids)
    assert [r.sha256 for r in recs] == [it.sha256 for it in items]
    found, got = store.get_embeddings("m", ids)
    assert list(found) == ids
    np.testing.assert_array_equal(got, vecs)
    assert store.count() == len(items) and store.info()["models"]["m"]["count"] == len(items)
    assert sorted(store.all_ids()) == sorted(ids)


def test_cluster_urls_parse_and_redact() -> None:
    url = "rediss+cluster://bob:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0"
    assert parse_url(url) == ("rediss+cluster", url)
    cu = parse_cluster_url(url)
    assert cu.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert (cu.username, cu.password, cu.tls) == ("bob", "s3cret", True)
    assert redact_url(url) == "rediss+cluster://bob:***@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002/0"
    assert parse_cluster_url("redis+cluster://kv1").nodes == (("kv1", 6379),)
    for bad in ("redis+cluster://", "redis+cluster://h:x", "redis+cluster://h:1/2",
                "redis+cluster://h:1,,h:2", "redis+cluster://h:1?ssl=true"):
        with pytest.raises(InvalidURLError):
            parse_url(bad)


def test_keys_of_one_record_share_a_slot(cstore) -> None:
    k = cstore.keys
    assert key_slot(k.img(42).encode()) == key_slot(k.emb("m", 42).encode()) == key_slot(b"000000000042")
    slots = {key_slot(k.img(i).encode()) for i in range(1, 200)}
    assert len(slots) > 100  # consecutive records spread over the cluster


def test_wrong_password_and_read_only(cluster_url, cstore) -> None:
    if "@" in cluster_url:
        pytest.skip("the external cluster has credentials of its own")
    bad = cluster_url.replace("://", "://bob:hunter2@", 1)
    with pytest.raises(StoreAuthError) as exc:
        open_store(bad)
    assert "hunter2" not in str(exc.value) and "***" in str(exc.value)
    items, _ = images(3)
    cstore.add_images(items)
    with open_store(cluster_url, cstore.namespace, read_only=True) as ro:
        assert ro.count() == 3 and ro.backend == "redis-cluster"
        with pytest.raises(ReadOnlyStoreError):
            ro.add_images(images(1, start=9)[0])
        with pytest.raises(ReadOnlyStoreError):
            ro.repair()


def test_restarted_node_loses_nothing(cstore, cluster_servers) -> None:
    servers = own_cluster(cluster_servers)
    items, vecs = images(1500)
    res = cstore.add_images(items)
    assert all(r.created for r in res)
    victim = servers.nodes[1]
    victim.kill()
    victim.start()
    servers.wait_ok()
    assert_complete(cstore, items, vecs)  # the open store reconnects by itself
    with open_store(servers.url, cstore.namespace) as fresh:
        assert_complete(fresh, items, vecs)
        again = fresh.add_images(items[:10])
        assert [r.created for r in again] == [False] * 10 and fresh.count() == 1500


def test_writes_during_an_outage_fail_clearly_and_a_retry_completes_them(cstore, cluster_servers) -> None:
    servers = own_cluster(cluster_servers)
    first, v1 = images(300)
    cstore.add_images(first)
    more, v2 = images(600, start=300)
    victim = servers.nodes[2]
    victim.kill()
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError):
            cstore.add_images(more)
        assert time.monotonic() - t0 < 30
    finally:
        victim.start()
        servers.wait_ok()
    assert cstore.add_images(more[:1])[0].id > 0  # works again
    cstore.add_images(more)  # re-running the ingest finishes what the outage interrupted
    assert_complete(cstore, first + more, np.concatenate([v1, v2]))
    fixed = cstore.repair()  # only leftovers: unclaimed records of the failed call
    assert fixed["dangling_claims"] == 0 and fixed["ids"] == 0 and fixed["eids"] == 0
    assert_complete(cstore, first + more, np.concatenate([v1, v2]))
    assert cstore.repair() == dict.fromkeys(fixed, 0)


def test_crash_leftovers_are_invisible_and_repaired(cstore) -> None:
    items, vecs = images(20)
    ids = [r.id for r in cstore.add_images(items)]
    r, k = cstore._r, cstore.keys  # noqa: SLF001 - simulate crashes between protocol steps
    # crash after step 3: a record with its embedding, never claimed nor indexed
    orphan = cstore.last_id() + 1
    r.incrby(k.seq, 1)
    r.hset(k.img(orphan), mapping={"id": orphan, "sha256": sha(999), "source": "x", "width": 1,
                                   "height": 1, "added": 1.0})
    r.set(k.emb("m", orphan), vecs[0].tobytes())
    # a loser that crashed before deleting its record: its sha is claimed by another id
    loser = orphan + 1
    r.incrby(k.seq, 1)
    r.hset(k.img(loser), mapping={"id": loser, "sha256": sha(0), "source": "y", "width": 1,
                                  "height": 1, "added": 1.0})
    # crash after step 4: claimed, but not in the sorted sets
    r.zrem(k.ids, ids[5])
    r.zrem(k.eids("m"), ids[5])
    assert cstore.count() == 19 and cstore.ids_for_hashes([sha(999)]) == [None]
    assert ids[5] not in cstore.all_ids() and orphan not in cstore.all_ids()
    # re-adding the image heals its sorted-set entries
    again = cstore.add_images([items[5]])
    assert again[0].id == ids[5] and not again[0].created and again[0].embedded == ()
    assert cstore.count() == 20 and ids[5] in cstore.all_ids()
    r.zrem(k.ids, ids[6])  # and the repair does too
    r.set(k.sha(sha(998)), 10**9)  # a dangling claim (the protocol never leaves one)
    fixed = cstore.repair()
    assert fixed == {"orphan_records": 2, "dangling_claims": 1, "stray_embeddings": 0, "ids": 1, "eids": 0}
    assert cstore.get_records([orphan, loser]) == [None, None]
    assert not cstore.has_embeddings("m", [orphan]).any()
    assert cstore.ids_for_hashes([sha(998)]) == [None]
    assert_complete(cstore, items, vecs)
    assert cstore.last_id() == loser  # the watermark never goes back


def test_same_images_from_many_writers_with_mixed_models(cluster_url, namespace) -> None:
    """Two stores race on one group; each image ends with one record and both models."""
    import threading

    a, b = open_store(cluster_url, namespace), open_store(cluster_url, namespace)
    try:
        a.register_model("m", 16, "v1")
        b.register_model("n", 4, "v1")
        items, _ = images(200)
        other = [NewImage(it.sha256, it.source, 8, 8, embeddings={"n": np.ones(4, np.float32)})
                 for it in items]
        barrier = threading.Barrier(2)
        out: dict[str, list] = {}

        def run(name: str, s, batch) -> None:
            barrier.wait()
            out[name] = s.add_images(batch)

        threads = [threading.Thread(target=run, args=("a", a, items)),
                   threading.Thread(target=run, args=("b", b, other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.id for r in out["a"]] == [r.id for r in out["b"]]
        assert all(ra.created != rb.created for ra, rb in zip(out["a"], out["b"], strict=True))
        assert all(r.embedded == ("m",) for r in out["a"]) and all(r.embedded == ("n",) for r in out["b"])
        info = a.info()
        counts = {m: v["count"] for m, v in info["models"].items()}
        assert info["images"] == 200 and counts == {"m": 200, "n": 200}
        assert a.repair()["orphan_records"] == 0  # losers deleted their records
    finally:
        a.flush()
        a.close()
        b.close()
