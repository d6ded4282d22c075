"""The index never serves stale or broken state (issue 14: items 1-3, 6).

Each test reproduces a failure of the old index on a real store: a snapshot outliving a
flush, a rebuild failing part-way, searches racing a catch-up that switches modes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from imagegen import image_bytes, make_folder

from imgsim_lab.index import IndexConfig, SimilarityIndex
from imgsim_lab.index import snapshot as snap
from imgsim_lab.models import get_model
from imgsim_lab.search import Searcher
from imgsim_lab.store import NewImage, StoreConnectionError, open_store
from imgsim_lab.store.rocks import RocksStore

pytestmark = pytest.mark.integration

MODEL = "m"
DIM = 16


def sha(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def put(store, vecs: np.ndarray, tag: str) -> np.ndarray:
    items = [NewImage(sha(f"{tag}{i}"), f"{tag}{i}", 1, 1, None, {MODEL: v}) for i, v in enumerate(vecs)]
    return np.array([r.id for r in store.add_images(items)], np.int64)


def assert_index_matches_store(idx: SimilarityIndex, store, model: str) -> None:
    """Every vector the (exact) index holds is the store's vector under that id, and no other."""
    ids, vecs = [], []
    for i, v in store.iter_embeddings(model):
        ids.append(i)
        vecs.append(v)
    ids, vecs = np.concatenate(ids), unit(np.concatenate(vecs))
    assert idx.mode == "exact" and idx.ntotal == len(ids)
    held = np.stack([idx.index.reconstruct(int(i)) for i in ids])
    wrong = ids[~np.all(np.abs(held - vecs) < 1e-5, axis=1)]
    assert not len(wrong), f"ids {wrong[:10].tolist()} hold vectors the store does not have"


def assert_hits_valid(store, model: str, q: np.ndarray, hits, k: int) -> None:
    """k unique hits, best first, each a stored image whose stored vector gives that score."""
    assert len(hits) == k, f"{len(hits)} hits, expected {k}"
    ids = [h.id for h in hits]
    assert len(set(ids)) == k
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    found, vecs = store.get_embeddings(model, ids)
    assert found.tolist() == ids, f"hits {sorted(set(ids) - set(found.tolist()))} are not stored"
    exact = vecs @ unit(q)
    assert np.allclose(scores, exact, atol=1e-4), f"scores {scores} != stored cosines {exact.tolist()}"


# ------------------------------------------------------------------ 14.1 stale after flush
def test_store_epoch_is_made_by_writers_and_renewed_by_a_flush(store_url, namespace):
    w = open_store(store_url, namespace)
    try:
        first = w.epoch()
        assert first and len(first) == 32 and w.epoch() == first  # stable while the namespace lives
        if w.backend != "rocksdb":  # a second client (RocksDB: the secondary below) agrees
            with open_store(store_url, namespace, read_only=True) as r:
                assert r.epoch() == first
        w.flush()
        assert w.raw_get([w.keys.epoch]) == [None]  # gone with the namespace's keys
        w.register_model(MODEL, DIM, "v1")
        put(w, unit(np.ones((1, DIM))), "e")  # the first write creates the next one
        second = w.raw_get([w.keys.epoch])[0]
        assert second is not None and second.decode() != first
    finally:
        if w.backend != "rocksdb":
            w.flush()
        w.close()


def test_read_only_store_without_an_epoch_reports_none(tmp_path):
    url = f"rocksdb:{tmp_path / 'kv'}"
    with open_store(url, "ns") as w:
        w.register_model(MODEL, DIM, "v1")  # a namespace written before epochs existed
    with open_store(url, "ns", read_only=True) as r:
        assert r.epoch() is None


def imgsim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "imgsim_lab.cli", *args], capture_output=True, text=True,
                         cwd=cwd, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.mark.slow
def test_cli_flush_then_ingest_other_images_serves_the_new_vectors(tmp_path):
    """The reproduction of 14.1: ingest 100, flush --yes, ingest 150 different (embedded store)."""
    url = f"rocksdb:{tmp_path / 'kv'}"
    first = make_folder(tmp_path / "first", 100)
    other = tmp_path / "other" / "any"
    other.mkdir(parents=True)
    for i in range(150):
        (other / f"o{i:04d}.png").write_bytes(image_bytes(5000 + i))
    common = ["--kv", url, "--namespace", "fl"]
    imgsim("ingest", str(first), "--model", "pixels", *common, cwd=tmp_path)
    index_dir = snap.default_dir(f"rocksdb:{(tmp_path / 'kv').resolve()}", "fl", "pixels")
    assert (index_dir / snap.MANIFEST_FILE).exists()
    imgsim("flush", "--yes", *common, cwd=tmp_path)
    assert not index_dir.exists(), "flush leaves the namespace's index snapshots behind"
    imgsim("ingest", str(other.parent), "--model", "pixels", *common, cwd=tmp_path)
    with open_store(url, "fl") as store:
        assert store.count() == 150
        idx = SimilarityIndex(store, "pixels")
        assert_index_matches_store(idx, store, "pixels")


def test_snapshot_of_a_flushed_namespace_is_not_loaded(store, tmp_path, caplog):
    """Same ids, other images: the epoch differs, so the snapshot is stale (any backend)."""
    store.register_model(MODEL, DIM, "v1")
    rng = np.random.default_rng(0)
    put(store, unit(rng.standard_normal((100, DIM))), "old")
    cfg = IndexConfig(snapshot_dir=tmp_path / "snap")  # not the default dir: flush cannot remove it
    SimilarityIndex(store, MODEL, cfg)
    store.flush()
    store.register_model(MODEL, DIM, "v1")
    ids = put(store, unit(rng.standard_normal((150, DIM))), "new")
    assert ids.min() == 1  # the ids of the flushed images are handed out again
    with caplog.at_level(logging.WARNING, logger="imgsim_lab.index"):
        idx = SimilarityIndex(store, MODEL, cfg)
    assert "epoch" in caplog.text and "stale snapshot" in caplog.text
    assert_index_matches_store(idx, store, MODEL)


def test_a_live_index_rebuilds_when_its_namespace_is_flushed(store, tmp_path):
    """An index kept in memory (the app, a notebook) across a flush by another client."""
    store.register_model(MODEL, DIM, "v1")
    rng = np.random.default_rng(1)
    put(store, unit(rng.standard_normal((100, DIM))), "old")
    idx = SimilarityIndex(store, MODEL, IndexConfig(snapshot_dir=tmp_path / "snap"))
    store.flush()
    idx.sync()
    assert idx.ntotal == 0  # the flushed vectors are gone, not served
    store.register_model(MODEL, DIM, "v1")
    x = unit(rng.standard_normal((150, DIM)))
    put(store, x, "new")
    idx.sync()
    assert_index_matches_store(idx, store, MODEL)
    assert_hits_valid(store, MODEL, x[3] + 0.1, idx.search(x[3] + 0.1, k=10), 10)


def test_snapshot_whose_sampled_vectors_differ_from_the_store_is_rebuilt(tmp_path, caplog):
    """Same epoch, same watermark, other vectors under the ids: the sample check catches it."""
    url = f"rocksdb:{tmp_path / 'kv'}"
    with open_store(url, "ns") as store:
        store.register_model(MODEL, DIM, "v1")
        rng = np.random.default_rng(2)
        ids = put(store, unit(rng.standard_normal((100, DIM))), "v")
        cfg = IndexConfig(snapshot_dir=tmp_path / "snap")
        SimilarityIndex(store, MODEL, cfg)
        for i, v in zip(ids.tolist(), unit(rng.standard_normal((100, DIM))), strict=True):
            store.raw_set(store.keys.emb(MODEL, i), v.astype("<f4").tobytes())
        with caplog.at_level(logging.WARNING, logger="imgsim_lab.index"):
            idx = SimilarityIndex(store, MODEL, cfg)
        assert "sampled vectors differ" in caplog.text
        assert_index_matches_store(idx, store, MODEL)


def test_read_only_index_sees_the_flush_of_its_writer(tmp_path):
    url = f"rocksdb:{tmp_path / 'kv'}"
    w = open_store(url, "ns")
    w.register_model(MODEL, DIM, "v1")
    rng = np.random.default_rng(3)
    put(w, unit(rng.standard_normal((100, DIM))), "old")
    reader = open_store(url, "ns", read_only=True)
    try:
        idx = SimilarityIndex(reader, MODEL, IndexConfig(snapshot_dir=tmp_path / "snap"))
        assert idx.ntotal == 100
        w.flush()
        w.register_model(MODEL, DIM, "v1")
        put(w, unit(rng.standard_normal((150, DIM))), "new")
        idx.sync()
        assert_index_matches_store(idx, reader, MODEL)
    finally:
        reader.close()
        w.close()


def test_a_store_whose_count_disagrees_with_its_listing_is_rebuilt_once(tmp_path, caplog):
    """A counter ahead of the listed embeddings (a stale RocksDB secondary, an unrepaired crash):
    one rebuild, a warning, then no rebuild on every sync."""
    with open_store(f"rocksdb:{tmp_path / 'kv'}", "ns") as store:
        store.register_model(MODEL, DIM, "v1")
        put(store, unit(np.random.default_rng(8).standard_normal((100, DIM))), "v")
        idx = SimilarityIndex(store, MODEL, IndexConfig(snapshot_dir=tmp_path / "snap"))
        store.raw_set(store.keys.model(MODEL), json.dumps({"dim": DIM, "version": "v1", "count": 150}))
        caplog.clear()  # the constructor's first build is logged too when INFO is already on
        with caplog.at_level(logging.INFO, logger="imgsim_lab.index"):
            for _ in range(4):
                idx.sync()
        assert caplog.text.count("built IDMap2,Flat") == 1
        assert "counts 150 vectors but lists 100" in caplog.text
        store.raw_set(store.keys.model(MODEL), json.dumps({"dim": DIM, "version": "v1", "count": 100}))
        put(store, unit(np.random.default_rng(9).standard_normal((5, DIM))), "w")
        assert idx.sync() == 5 and idx.ntotal == 105


# ------------------------------------------------------------ 14.2 a failed rebuild
class FlakyRocksStore(RocksStore):
    """A real RocksDB store whose vector scans fail after ``fail_after`` chunks (when set)."""

    fail_after: int | None = None

    def iter_embeddings(self, model, after_id=0, chunk_size=4096):
        for n, chunk in enumerate(super().iter_embeddings(model, after_id, chunk_size)):
            if self.fail_after is not None and n >= self.fail_after:
                raise StoreConnectionError(f"injected: the store went away after {n} chunks")
            yield chunk


def test_failed_rebuild_keeps_serving_and_the_next_sync_recovers(tmp_path):
    store = FlakyRocksStore(tmp_path / "kv", "ns")
    try:
        store.register_model(MODEL, DIM, "v1")
        rng = np.random.default_rng(4)
        x = unit(rng.standard_normal((600, DIM)))
        put(store, x[:200], "a")
        # exact fits 300 vectors: 600 call for budget mode, and the rebuild reads 4+ chunks
        cfg = IndexConfig(snapshot_dir=tmp_path / "snap", chunk_size=64, nlist=4,
                          memory_budget=300 * (4 * DIM + 56))
        idx = SimilarityIndex(store, MODEL, cfg)
        assert idx.mode == "exact" and idx.ntotal == 200
        put(store, x[200:], "b")
        store.fail_after = 7  # the catch-up reads 400 vectors (7 chunks), the rebuild breaks in its 8th
        with pytest.raises(StoreConnectionError):
            idx.sync()
        # every search still works, on the last good state
        st = idx.stats()
        assert (st["mode"], st["factory"]) == ("exact", "IDMap2,Flat")
        for j in (0, 150, 399):
            assert_hits_valid(store, MODEL, x[j] + 0.05, idx.search(x[j] + 0.05, k=10), 10)
        store.fail_after = None
        idx.sync()
        assert idx.mode == "budget" and idx.ntotal == 600
        assert_hits_valid(store, MODEL, x[500] + 0.05, idx.search(x[500] + 0.05, k=10), 10)
    finally:
        store.close()


def test_failed_catch_up_leaves_a_consistent_state(tmp_path):
    """A store error part-way through a catch-up: no vector is added twice or skipped."""
    store = FlakyRocksStore(tmp_path / "kv", "ns")
    try:
        store.register_model(MODEL, DIM, "v1")
        rng = np.random.default_rng(5)
        x = unit(rng.standard_normal((500, DIM)))
        put(store, x[:100], "a")
        idx = SimilarityIndex(store, MODEL, IndexConfig(snapshot_dir=tmp_path / "snap", chunk_size=50))
        put(store, x[100:], "b")
        store.fail_after = 3
        with pytest.raises(StoreConnectionError):
            idx.sync()
        assert idx.ntotal == 250 and idx.watermark == 250  # three chunks of 50 went in
        store.fail_after = None
        assert idx.sync() == 250
        assert_index_matches_store(idx, store, MODEL)
    finally:
        store.close()


# --------------------------------------------------- 14.3 concurrent search + catch-up
WRITER = """
import sys, time
from imgsim_lab.index.synthetic import SyntheticSpec, generate, synthetic_sha
from imgsim_lab.store import NewImage, open_store
url, ns, model, start, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
spec = SyntheticSpec(dim=512, latent_dim=16, n_clusters=32)
x = generate(spec, start, n)
with open_store(url, ns) as s:
    for b in range(0, n, 50):
        s.add_images([NewImage(synthetic_sha(0, start + b + j), f"w{start + b + j}", 1, 1, None, {model: v})
                      for j, v in enumerate(x[b : b + 50])])
        time.sleep(0.05)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "rocksdb"])
def test_concurrent_searches_while_another_process_forces_a_mode_switch(backend, request, namespace,
                                                                        tmp_path):
    """Redis: both processes share the server. RocksDB: the searching process reads a secondary
    (read-only) instance while the other process is the writer, as the app does."""
    from imgsim_lab.index.synthetic import SyntheticSpec, generate, synthetic_sha

    url = request.getfixturevalue("redis_url") if backend == "redis" else f"rocksdb:{tmp_path / 'kv'}"
    model = get_model("color_hist")  # 512-d; the vectors are synthetic, only the key matters
    spec = SyntheticSpec(dim=512, latent_dim=16, n_clusters=32)
    with open_store(url, namespace) as w:
        w.register_model(model.key, model.dim, model.version)
        x = generate(spec, 0, 300)
        w.add_images([NewImage(synthetic_sha(0, i), f"s{i}", 1, 1, None, {model.key: v})
                      for i, v in enumerate(x)])
    store = open_store(url, namespace, read_only=backend == "rocksdb")
    try:
        # the exact index fits 600 vectors: the writer's 1,200 more force budget mode
        cfg = IndexConfig(snapshot_dir=tmp_path / "snap", memory_budget=600 * (4 * 512 + 56))
        searcher = Searcher(store, model, index_config=cfg)
        assert searcher.index.mode == "exact"
        queries = generate(SyntheticSpec(dim=512, latent_dim=16, n_clusters=32, seed=0), 5000, 64)
        errors: list[BaseException] = []
        done = threading.Event()
        counts = [0] * 4
        modes: set[str] = set()

        def search(t: int) -> None:
            rng = np.random.default_rng(t)
            while not done.is_set():
                q = queries[rng.integers(len(queries))]
                try:
                    matches = searcher.search_vector(q, k=10)
                    assert all(m.record is not None for m in matches)
                    assert_hits_valid(store, model.key, q, matches, 10)
                    modes.add(searcher.index.mode)
                    counts[t] += 1
                except BaseException as exc:  # noqa: BLE001 - collected and reported
                    errors.append(exc)
                    if len(errors) > 20:
                        return

        threads = [threading.Thread(target=search, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, url, namespace, model.key, "300", "1200"],
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert writer.wait(timeout=240) == 0, writer.stderr.read()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not errors and not (
                    searcher.index.mode == "budget" and searcher.index.ntotal == 1500):
                time.sleep(0.2)
            time.sleep(0.5)  # a few more searches on the final state
        finally:
            done.set()
            for th in threads:
                th.join(timeout=120)
            if writer.poll() is None:
                writer.kill()
        assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
        assert all(c > 0 for c in counts), counts
        assert searcher.index.mode == "budget" and searcher.index.ntotal == 1500
        assert "exact" in modes and "budget" in modes
    finally:
        if backend == "redis":
            store.flush()
        store.close()


def test_searches_stay_valid_while_the_index_flips_modes_in_place(tmp_path):
    """4 threads search one index while a 5th grows and shrinks the store across the exact/budget
    threshold: in-place catch-up and deletion, and a rebuild swapped in at each flip."""
    store = open_store(f"rocksdb:{tmp_path / 'kv'}", "ns")
    try:
        store.register_model(MODEL, DIM, "v1")
        rng = np.random.default_rng(7)
        x = unit(rng.standard_normal((2000, DIM)))
        live = put(store, x[:200], "c")
        truth = {int(i): x[j] for j, i in enumerate(live)}  # ids are never reused
        cfg = IndexConfig(snapshot_dir=tmp_path / "snap", memory_budget=300 * (4 * DIM + 56), nlist=4,
                          autosave=False)
        idx = SimilarityIndex(store, MODEL, cfg)
        stop = threading.Event()
        errors: list[BaseException] = []
        seen: list[str] = []

        def search(t: int) -> None:
            r = np.random.default_rng(100 + t)
            while not stop.is_set() and len(errors) < 20:
                q = unit(r.standard_normal(DIM))
                try:
                    hits = idx.search(q, k=10)
                    assert len(hits) == 10 and len({h.id for h in hits}) == 10
                    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
                    exact = np.array([truth[h.id] @ q for h in hits])
                    assert np.allclose([h.score for h in hits], exact, atol=1e-4)
                    seen.append(idx.mode)
                except BaseException as exc:  # noqa: BLE001 - collected and reported
                    errors.append(exc)

        threads = [threading.Thread(target=search, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        modes = []
        try:
            for cycle in range(8):
                s = 200 * (cycle + 1)
                new = put(store, x[s : s + 200], f"c{cycle}-")
                truth.update({int(i): x[s + j] for j, i in enumerate(new)})
                idx.sync()
                modes.append(idx.mode)
                store.delete(live.tolist())
                live = new
                idx.sync()
                modes.append(idx.mode)
        finally:
            stop.set()
            for th in threads:
                th.join(timeout=60)
        assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
        assert modes == ["budget", "exact"] * 8
        assert {"exact", "budget"} <= set(seen) and len(seen) > 100
    finally:
        store.close()
