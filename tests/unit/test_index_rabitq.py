"""The numpy RaBitQ encoder and the bulk fill of flat RaBitQ indexes, against faiss itself."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from imgsim_lab.index import builders
from imgsim_lab.index.builders import new_budget, rabitq_codes


def _vectors(n: int, dim: int, seed: int = 0, nonneg: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    if nonneg:  # CNN features after a ReLU: all >= 0, far from the origin's centre
        x = np.abs(x)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("metric", [faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2])
@pytest.mark.parametrize("dim,nonneg", [(64, False), (1280, True), (100, True)])
def test_numpy_codes_equal_faiss_codes(metric, dim, nonneg):
    x = _vectors(600, dim, nonneg=nonneg)
    index = faiss.IndexRaBitQ(dim, metric)
    index.train(x[:300])
    center = faiss.vector_to_array(index.center).astype(np.float32)
    theirs = index.sa_encode(x)
    mine = rabitq_codes(x, center, metric == faiss.METRIC_INNER_PRODUCT, scratch=np.empty(10, np.float32))
    nb = (dim + 7) // 8
    assert mine.shape == theirs.shape == (600, nb + 8)
    assert np.array_equal(mine[:, :nb], theirs[:, :nb])  # sign bits: exact
    assert np.allclose(mine[:, nb:].copy().view(np.float32), theirs[:, nb:].copy().view(np.float32),
                       rtol=1e-4, atol=1e-5)  # factors: float rounding of another summation order
    assert builders._codes_agree(mine, theirs, dim)


@pytest.mark.parametrize("n,block", [(1, 64), (63, 64), (64, 64), (65, 64), (130, 64), (50, 7), (20, 1000)])
def test_cache_blocks_cover_every_row_once(n, block):
    """Blocking is invisible: every row's code equals faiss', whatever the last block's size."""
    x = _vectors(n, 96, seed=n, nonneg=True)
    index = faiss.IndexRaBitQ(96, faiss.METRIC_INNER_PRODUCT)
    index.train(_vectors(256, 96, seed=99, nonneg=True))
    center = faiss.vector_to_array(index.center).astype(np.float32)
    mine = rabitq_codes(x, center, True, block=block)
    assert builders._codes_agree(mine, index.sa_encode(x), 96)


@pytest.mark.parametrize("factory", ["RaBitQ", "RaBitQfs_64"])
def test_fill_builds_the_same_index_as_faiss_add(factory, monkeypatch):
    calls = []
    monkeypatch.setattr(builders, "rabitq_codes", lambda *a, **k: calls.append(1) or rabitq_codes(*a, **k))
    x = _vectors(5000, 96, seed=2, nonneg=True)
    ids = np.arange(len(x), dtype=np.int64) * 3 + 7
    keep = ids <= ids[-100]  # ids past the watermark are left out
    ref = new_budget(96, factory, x[:2048])
    ref.add_with_ids(x[keep], ids[keep])
    idx = new_budget(96, factory, x[:2048])
    chunks = ((ids[s:s + 700], x[s:s + 700]) for s in range(0, len(x), 700))
    timings: dict[str, float] = {}
    got = builders.fill(idx, chunks, upto_id=int(ids[-100]), timings=timings)
    assert np.array_equal(got, ids[keep]) and idx.ntotal == len(got)
    assert timings["add"] > 0
    # numpy encodes the plain index; fast-scan packs its codes in blocks: faiss adds those
    assert len(calls) == (8 if factory == "RaBitQ" else 0)
    q = x[:25] + 0.01
    d1, i1 = ref.search(q, 20)
    d2, i2 = idx.search(q, 20)
    assert np.array_equal(i1, i2) and np.allclose(d1, d2, atol=1e-4)
    assert np.array_equal(builders.index_ids(idx), np.sort(got))
    # later adds and removals go through faiss as usual
    idx.add_with_ids(x[:3], np.array([1, 2, 4], np.int64))
    assert idx.remove_ids(np.array([1, 7], np.int64)) == 2 and idx.ntotal == len(got) + 1


def test_fill_falls_back_to_faiss_when_the_numpy_codes_disagree(monkeypatch, caplog):
    x = _vectors(2000, 64, seed=4)
    ids = np.arange(len(x), dtype=np.int64)
    ref = new_budget(64, "RaBitQ", x[:1024])
    ref.add_with_ids(x, ids)

    def wrong(x, center, inner_product=True, scratch=None, block=None):
        codes = rabitq_codes(x, center, inner_product, scratch, block)
        codes[:, 0] ^= 1  # a different sign bit: faiss' layout moved
        return codes

    monkeypatch.setattr(builders, "rabitq_codes", wrong)
    idx = new_budget(64, "RaBitQ", x[:1024])
    with caplog.at_level(logging.WARNING, logger="imgsim_lab.index.builders"):
        builders.fill(idx, ((ids[s:s + 500], x[s:s + 500]) for s in range(0, 2000, 500)), upto_id=10**9)
    assert "encoding with faiss" in caplog.text
    assert np.array_equal(faiss.vector_to_array(faiss.downcast_index(idx.index).codes),
                          faiss.vector_to_array(faiss.downcast_index(ref.index).codes))


def test_fill_leaves_other_indexes_to_faiss():
    x = _vectors(3000, 32, seed=5)
    ids = np.arange(len(x), dtype=np.int64)
    idx = new_budget(32, "IVF16,SQ8", x[:2000])
    got = builders.fill(idx, iter([(ids, x)]), upto_id=10**9)
    assert len(got) == 3000 and idx.ntotal == 3000


def test_a_factory_this_faiss_cannot_build_is_no_candidate(monkeypatch, caplog):
    assert builders.buildable(64, "RaBitQfs_64") and builders.buildable(1280, "PCA128,IVF256,SQ8")
    real = faiss.index_factory

    def old_faiss(d, spec, metric=faiss.METRIC_L2):  # a faiss before RaBitQ
        if "RaBitQ" in spec:
            raise RuntimeError("could not parse index string RaBitQ")
        return real(d, spec, metric)

    monkeypatch.setattr(faiss, "index_factory", old_faiss)
    with caplog.at_level(logging.INFO, logger="imgsim_lab.index.builders"):
        assert not builders.buildable(64, "RaBitQ") and not builders.buildable(64, "PCA32,RaBitQfs_64")
    assert "cannot build RaBitQ" in caplog.text
    assert builders.buildable(64, "IVF16,SQ8")
