"""The query cache of SimilarityIndex on real stores: repeated queries hit, any index change misses."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from imgsim_lab.index import IndexConfig, SimilarityIndex
from imgsim_lab.index.synthetic import SyntheticSpec, generate, write_to_store
from imgsim_lab.store import NewImage, open_store

pytestmark = pytest.mark.integration

MODEL = "m"


def _sha(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def _put(store, vecs: np.ndarray, tag: str) -> list[int]:
    items = [NewImage(_sha(f"{tag}{i}"), f"{tag}{i}", 1, 1, None, {MODEL: v}) for i, v in enumerate(vecs)]
    return [r.id for r in store.add_images(items)]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _counts(idx: SimilarityIndex) -> tuple[int, int]:
    s = idx.stats()["query_cache"]
    return s["hits"], s["misses"]


def test_repeated_queries_hit_until_the_index_changes(store, tmp_path):
    store.register_model(MODEL, 16, "v1")
    x = _unit(np.random.default_rng(4).standard_normal((300, 16)))
    ids = _put(store, x, "v")
    idx = SimilarityIndex(store, MODEL, IndexConfig(mode="exact", query_cache=8, snapshot_dir=tmp_path / "s"))
    first = idx.search(x[0], 5, exclude_ids=[ids[0]])
    assert _counts(idx) == (0, 1)
    assert idx.search(x[0], 5, exclude_ids=[ids[0]]) == first and _counts(idx) == (1, 1)
    # the same exclusion given by sha256 is the same query; another k, exclusion or vector is not
    assert idx.search(x[0], 5, exclude_sha256=_sha("v0")) == first and _counts(idx) == (2, 1)
    idx.search(x[0], 6, exclude_ids=[ids[0]])
    idx.search(x[0], 5)
    idx.search(x[0] + 1e-3, 5, exclude_ids=[ids[0]])
    assert _counts(idx) == (2, 4)
    assert idx.search(x[0], 5, exclude_ids=[ids[0]], cache=False) == first and _counts(idx) == (2, 4)
    # a new vector next to the query, caught up by sync: the cached answer is dropped, the new one wins
    near = _put(store, _unit(x[:1] + 1e-3), "near")[0]
    assert idx.sync() == 1
    again = idx.search(x[0], 5, exclude_ids=[ids[0]])
    assert again[0].id == near and again[1:] == first[:4] and _counts(idx) == (2, 5)
    # deleted from the store and synced: gone from the answer (no stale hit)
    store.delete([near])
    idx.sync()
    assert idx.search(x[0], 5, exclude_ids=[ids[0]]) == first and _counts(idx) == (2, 6)
    # add / remove on the index itself invalidate too
    idx.remove([first[0].id])
    assert first[0].id not in {h.id for h in idx.search(x[0], 5, exclude_ids=[ids[0]])}
    idx.add([first[0].id], x[[int(np.searchsorted(ids, first[0].id))]])
    assert idx.search(x[0], 5, exclude_ids=[ids[0]]) == first
    assert idx.stats()["query_cache"]["invalidations"] >= 3
    # bounded: 10 more distinct queries keep the 8 most recent
    for j in range(1, 11):
        idx.search(x[j], 5)
    st = idx.stats()["query_cache"]
    assert st["entries"] == 8 and st["capacity"] == 8
    h, m = _counts(idx)
    idx.search(x[10], 5)
    idx.search(x[1], 5)  # evicted
    assert _counts(idx) == (h + 1, m + 1)


def test_capacity_zero_disables_the_cache(store, tmp_path):
    store.register_model(MODEL, 16, "v1")
    x = _unit(np.random.default_rng(5).standard_normal((50, 16)))
    _put(store, x, "w")
    idx = SimilarityIndex(store, MODEL, IndexConfig(mode="exact", query_cache=0, snapshot_dir=tmp_path / "s"))
    assert idx.search(x[0], 3) == idx.search(x[0], 3)
    assert idx.stats()["query_cache"] == {"capacity": 0, "entries": 0, "hits": 0, "misses": 0,
                                          "hit_rate": 0.0, "invalidations": 0}


def test_budget_mode_cached_answers_equal_fresh_ones_and_a_rebuild_drops_them(tmp_path):
    store = open_store(f"rocksdb:{tmp_path / 'kv'}", "qc")
    try:
        spec = SyntheticSpec(dim=64, latent_dim=16, n_clusters=64)
        write_to_store(store, "synthetic64", 6000, spec, progress=False)
        x = generate(spec, 0, 6000)
        idx = SimilarityIndex(store, "synthetic64", IndexConfig(memory_budget=0.3, auto_tune=False,
                                                                snapshot_dir=tmp_path / "s"))
        assert idx.mode == "budget"
        rows = [3, 77, 3, 500, 77, 3]
        got = [idx.search(x[j], 10, exclude_ids=[j + 1]) for j in rows]
        assert got == [idx.search(x[j], 10, exclude_ids=[j + 1], cache=False) for j in rows]
        assert _counts(idx) == (3, 3)
        idx.rebuild()
        assert idx.search(x[3], 10, exclude_ids=[4]) == got[0] and _counts(idx) == (3, 4)
    finally:
        store.close()
