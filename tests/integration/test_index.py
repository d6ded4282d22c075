"""SimilarityIndex over a real store (both backends): exactness, recall, catch-up, snapshots."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import time

import numpy as np
import pytest

from imgsim_lab.index import Hit, IndexConfig, SimilarityIndex
from imgsim_lab.index.synthetic import SyntheticSpec, generate, write_to_store
from imgsim_lab.store import NewImage, open_store
from imgsim_lab.store.config import StoreConfig

pytestmark = pytest.mark.integration

MODEL = "m"


def sha(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def put(store, vecs: np.ndarray, tag: str = "v", start: int = 0) -> np.ndarray:
    """Add one image per vector; returns their ids."""
    items = [NewImage(sha(f"{tag}{start + i}"), f"{tag}{start + i}", 1, 1, None, {MODEL: v})
             for i, v in enumerate(vecs)]
    return np.array([r.id for r in store.add_images(items)], np.int64)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def brute(ids: np.ndarray, x: np.ndarray, q: np.ndarray, k: int,
          exclude: set[int]) -> list[tuple[int, float]]:
    s = x @ q
    order = np.argsort(-s)
    return [(int(ids[j]), float(s[j])) for j in order if int(ids[j]) not in exclude][:k]


def cfg(tmp_path, **kw) -> IndexConfig:
    return IndexConfig(snapshot_dir=tmp_path / "snap", **kw)


def test_exact_mode_equals_brute_force(store, tmp_path):
    store.register_model(MODEL, 32, "v1")
    x = unit(np.random.default_rng(0).standard_normal((500, 32)))
    ids = put(store, x)
    idx = SimilarityIndex(store, MODEL, cfg(tmp_path, mode="exact"))
    assert idx.stats()["mode"] == "exact" and idx.ntotal == 500
    for j in (0, 17, 499):
        hits = idx.search(x[j], k=10, exclude_ids=[int(ids[j])])
        want = brute(ids, x, x[j], 10, {int(ids[j])})
        assert [h.id for h in hits] == [i for i, _ in want]
        assert np.allclose([h.score for h in hits], [s for _, s in want], atol=1e-5)
        assert all(isinstance(h, Hit) for h in hits)
    batch = idx.search_batch(x[:20], k=10, exclude_ids_per_query=[[int(i)] for i in ids[:20]])
    assert [[h.id for h in b] for b in batch] == [[h.id for h in idx.search(x[j], 10, [int(ids[j])])]
                                                  for j in range(20)]
    # the query's own id is excluded by sha256 too, and k larger than the collection
    assert int(ids[3]) not in {h.id for h in idx.search(x[3], k=5, exclude_sha256=sha("v3"))}
    assert len(idx.search(x[3], k=1000)) == 499  # its identical self is a duplicate


def test_budget_mode_keeps_a_recall_floor(store, tmp_path):
    spec = SyntheticSpec(dim=64, latent_dim=16, n_clusters=64)
    write_to_store(store, "synthetic64", 6000, spec, progress=False)
    x = generate(spec, 0, 6000)
    idx = SimilarityIndex(store, "synthetic64", cfg(tmp_path, memory_budget=0.3, rerank_min=40))
    st = idx.stats()
    assert st["mode"] == "budget" and st["index_bytes"] <= st["budget_bytes"]
    ids = np.arange(1, 6001)
    rng = np.random.default_rng(3)
    recall = []
    for j in rng.choice(6000, 60, replace=False):
        hits = idx.search(x[j], k=10, exclude_ids=[int(ids[j])])
        want = brute(ids, x, x[j], 10, {int(ids[j])})
        assert len({h.id for h in hits}) == 10
        recall.append(len({h.id for h in hits} & {i for i, _ in want}) / 10)
        scores = {i: s for i, s in want}  # re-ranked scores are exact cosines
        assert all(abs(h.score - scores[h.id]) < 1e-5 for h in hits if h.id in scores)
    assert np.mean(recall) >= 0.9
    for j in rng.choice(6000, 5, replace=False):  # a query asked again gets the same answer
        first = [(h.id, h.score) for h in idx.search(x[j], k=10, exclude_ids=[int(ids[j])])]
        assert [(h.id, h.score) for h in idx.search(x[j], k=10, exclude_ids=[int(ids[j])])] == first


def test_many_exact_duplicates_still_give_k_results(store, tmp_path):
    store.register_model(MODEL, 16, "v1")
    rng = np.random.default_rng(1)
    v = unit(rng.standard_normal(16))
    dup_ids = put(store, np.repeat(v[None], 50, axis=0), tag="dup")
    others = put(store, unit(v + 0.8 * rng.standard_normal((10, 16))), tag="other")
    for mode in ("exact", "budget"):
        c = cfg(tmp_path, mode=mode, k_margin=2, nlist=2, rerank_min=5, rerank_factor=1.0)
        idx = SimilarityIndex(store, MODEL, IndexConfig(**{**c.__dict__, "snapshot_dir": tmp_path / mode}))
        hits = idx.search(v, k=5, exclude_ids=[int(dup_ids[0])])
        assert len(hits) == 5 and len({h.id for h in hits}) == 5
        assert all(h.id in set(others.tolist()) and h.score < 1 - 1e-6 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert len(idx.search(v, k=50)) == 10  # only 10 other images exist


def test_catch_up_and_deletions(store, tmp_path):
    store.register_model(MODEL, 16, "v1")
    rng = np.random.default_rng(2)
    x = unit(rng.standard_normal((300, 16)))
    ids = put(store, x[:200])
    idx = SimilarityIndex(store, MODEL, cfg(tmp_path))
    assert idx.ntotal == 200
    new = put(store, x[200:], start=200)
    assert idx.sync() == 100 and idx.ntotal == 300 and idx.watermark == store.last_id()
    assert idx.search(x[250], k=1, exclude_ids=[int(new[50])])[0].id != int(new[50])
    assert idx.search(x[250] + 1e-3, k=1)[0].id == int(new[50])
    gone = [int(ids[5]), int(new[7])]
    store.delete(gone)
    assert idx.sync() == 0 and idx.ntotal == 298
    assert not {h.id for h in idx.search(x[5], k=20)} & set(gone)
    # a new index object starts from the snapshot and catches up
    idx.save()
    put(store, unit(rng.standard_normal((5, 16))), tag="late")
    again = SimilarityIndex(store, MODEL, cfg(tmp_path))
    assert again.ntotal == 303 and again.stats()["last_rebuild_s"] == 0.0  # loaded, not rebuilt


WRITER = """
import sys, hashlib, numpy as np
from imgsim_lab.store import open_store, NewImage
url, ns, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = open_store(url, ns)
v = np.random.default_rng(9).standard_normal((n, 16)).astype(np.float32)
s.add_images([NewImage(hashlib.sha256(f"sub{i}".encode()).hexdigest(), f"sub{i}", 1, 1, None, {"m": v[i]})
              for i in range(n)])
s.close()
"""


def test_index_follows_another_process_writing_to_redis(redis_url, namespace, tmp_path):
    s = open_store(redis_url, namespace)
    try:
        s.register_model(MODEL, 16, "v1")
        put(s, unit(np.random.default_rng(4).standard_normal((40, 16))))
        idx = SimilarityIndex(s, MODEL, cfg(tmp_path))
        out = subprocess.run([sys.executable, "-c", WRITER, redis_url, namespace, "25"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert idx.sync() == 25 and idx.ntotal == 65
    finally:
        s.flush()
        s.close()


def test_sync_does_not_rebuild_while_a_writer_has_ids_in_flight(server_url, namespace, tmp_path):
    """Ids listed past the watermark (a lower reservation still in flight) are not a
    disagreement: the count the index checks against stops at the watermark too.

    A CI run's search-under-load test saw 4 rebuilds: between one MULTI of a round and
    the next, a reader counts the first batch's records while the watermark waits.
    """
    s = open_store(server_url, namespace)
    slow = open_store(server_url, namespace, config=StoreConfig(writer_lease=2.0))
    try:
        s.register_model(MODEL, 16, "v1")
        x = unit(np.random.default_rng(6).standard_normal((60, 16)))
        put(s, x[:40])
        idx = SimilarityIndex(s, MODEL, cfg(tmp_path))
        before = idx.rebuilds
        slow._reserve(10)  # a writer holds ids 41..50 and has not committed them
        put(s, x[40:], start=40)  # ids 51..70: written and listed
        assert s.last_id() == 40
        assert idx.sync() == 0 and idx.ntotal == 40
        assert idx.rebuilds == before  # the old count (all 60 listed) called for a rebuild
        deadline = time.monotonic() + 5  # the slow writer never commits: its lease runs out
        while s.last_id() != 70 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert s.last_id() == 70
        assert idx.sync() == 20 and idx.ntotal == 60 and idx.rebuilds == before
    finally:
        s.flush()
        s.close()
        slow.close()


def test_index_over_read_only_rocksdb_follows_the_writer(tmp_path):
    url = f"rocksdb:{tmp_path / 'kv'}"
    w = open_store(url, "ns")
    w.register_model(MODEL, 16, "v1")
    x = unit(np.random.default_rng(5).standard_normal((60, 16)))
    put(w, x[:30])
    reader = open_store(url, "ns", read_only=True)
    idx = SimilarityIndex(reader, MODEL, cfg(tmp_path))
    assert idx.ntotal == 30
    new = put(w, x[30:], start=30)
    w.delete([1])
    assert idx.sync() == 30 and idx.ntotal == 59
    assert idx.search(x[45], k=1, exclude_ids=[])[0].id != int(new[15])  # identical: a duplicate
    reader.close()
    w.close()


def test_corrupt_or_truncated_snapshot_is_rebuilt_and_logged(store, tmp_path, caplog):
    store.register_model(MODEL, 16, "v1")
    x = unit(np.random.default_rng(6).standard_normal((100, 16)))
    put(store, x)
    SimilarityIndex(store, MODEL, cfg(tmp_path))
    path = tmp_path / "snap" / "index.faiss"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="imgsim_lab.index"):
        idx = SimilarityIndex(store, MODEL, cfg(tmp_path))
    assert idx.ntotal == 100 and "rebuilding" in caplog.text and "truncated" in caplog.text
    caplog.clear()
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="imgsim_lab.index"):
        idx = SimilarityIndex(store, MODEL, cfg(tmp_path))
    assert idx.ntotal == 100 and "checksum" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imgsim_lab.index"):  # other settings: stale
        SimilarityIndex(store, MODEL, cfg(tmp_path, mode="budget", nlist=2))
    assert "stale" in caplog.text


def test_budget_mode_incremental_add_remove_and_store_scan(store, tmp_path):
    store.register_model(MODEL, 16, "v1")
    x = unit(np.random.default_rng(7).standard_normal((400, 16)))
    ids = put(store, x)
    idx = SimilarityIndex(store, MODEL, cfg(tmp_path, mode="budget", nlist=4))
    assert idx.mode == "budget"
    assert idx.remove([int(ids[0]), int(ids[1])]) == 2 and idx.ntotal == 398
    hits = idx.search(x[0], k=3)
    assert int(ids[0]) not in {h.id for h in hits}
    idx.add(ids[:2], x[:2])
    assert idx.ntotal == 400 and idx.search(x[0] + 1e-3, k=1)[0].id == int(ids[0])
    # widening gives up quickly: the exact scan of the store still returns all
    tight = SimilarityIndex(store, MODEL, IndexConfig(mode="budget", nlist=4, nprobe=1, rerank_min=1,
                                                      rerank_factor=1.0, k_margin=0, max_widen_rounds=0,
                                                      snapshot_dir=tmp_path / "tight"))
    assert len(tight.search(x[0], k=399)) == 399


def test_empty_store_then_growth_in_budget_mode(store, tmp_path):
    store.register_model(MODEL, 16, "v1")
    idx = SimilarityIndex(store, MODEL, cfg(tmp_path, mode="budget", nlist=4))
    assert idx.ntotal == 0 and idx.search(np.ones(16, np.float32), k=3) == []
    x = unit(np.random.default_rng(8).standard_normal((300, 16)))
    ids = put(store, x)
    assert idx.sync() == 300 and idx.mode == "budget" and idx.ntotal == 300
    assert idx.search(x[9] + 1e-3, k=1)[0].id == int(ids[9])


def test_vectors_added_directly_are_not_duplicated_by_sync(store, tmp_path):
    store.register_model(MODEL, 16, "v1")
    x = unit(np.random.default_rng(10).standard_normal((120, 16)))
    put(store, x[:100])
    idx = SimilarityIndex(store, MODEL, cfg(tmp_path, mode="budget", nlist=2))
    new = put(store, x[100:], start=100)
    idx.add(new, x[100:])  # e.g. the ingesting process indexes what it just stored
    assert idx.sync() == 0 and idx.ntotal == 120
    hits = idx.search(x[110] + 1e-3, k=3)
    assert hits[0].id == int(new[10]) and len({h.id for h in hits}) == 3


@pytest.mark.parametrize("factory", ["RaBitQ", "RaBitQfs_64"])
def test_flat_rabitq_index_recall_sync_removal_and_snapshot(store, tmp_path, factory):
    """A flat RaBitQ budget index (issue 19's fastest rebuild): re-ranked recall, catch-up,
    deletions and a snapshot, on every backend."""
    spec = SyntheticSpec(dim=64, latent_dim=16, n_clusters=64, seed=11)
    write_to_store(store, "synthetic64", 3000, spec, progress=False)
    x = generate(spec, 0, 3000)
    ids = np.arange(1, 3001)
    idx = SimilarityIndex(store, "synthetic64", cfg(tmp_path, mode="budget", memory_budget=0.3,
                                                    factory=factory, rerank_min=80))
    st = idx.stats()
    assert st["mode"] == "budget" and st["factory"] == factory and idx.ntotal == 3000
    assert st["index_bytes"] <= st["budget_bytes"]
    recall = []
    for j in np.random.default_rng(5).choice(3000, 40, replace=False):
        hits = idx.search(x[j], k=10, exclude_ids=[int(ids[j])])
        want = dict(brute(ids, x, x[j], 10, {int(ids[j])}))
        assert len({h.id for h in hits}) == 10 and int(ids[j]) not in {h.id for h in hits}
        assert all(abs(h.score - want[h.id]) < 1e-5 for h in hits if h.id in want)  # exact cosines
        recall.append(len({h.id for h in hits} & set(want)) / 10)
    assert np.mean(recall) >= 0.95
    new = unit(np.random.default_rng(6).standard_normal((40, 64)))
    items = [NewImage(sha(f"late{i}"), f"late{i}", 1, 1, None, {"synthetic64": v}) for i, v in enumerate(new)]
    late = np.array([r.id for r in store.add_images(items)], np.int64)
    assert idx.sync() == 40 and idx.ntotal == 3040 and idx.rebuilds == 1
    assert idx.search(new[3] + 1e-3, k=1)[0].id == int(late[3])
    gone = [int(late[3]), int(ids[0])]
    store.delete(gone)
    assert idx.sync() == 0 and idx.ntotal == 3038 and idx.rebuilds == 1  # removed in place
    assert not {h.id for h in idx.search(new[3], k=20)} & set(gone)
    idx.save()
    again = SimilarityIndex(store, "synthetic64", cfg(tmp_path, mode="budget", memory_budget=0.3,
                                                      factory=factory, rerank_min=80))
    assert again.ntotal == 3038 and again.stats()["last_rebuild_s"] == 0.0  # loaded, not rebuilt
    q = x[100]
    assert [h.id for h in again.search(q, k=10)] == [h.id for h in idx.search(q, k=10)]
