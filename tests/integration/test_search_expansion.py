"""αQE in :class:`~imgsim_lab.search.Searcher` on every backend: better ranks, same guarantees."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from imgsim_lab.expansion import ExpansionConfig
from imgsim_lab.index import IndexConfig
from imgsim_lab.models import get_model
from imgsim_lab.search import Searcher
from imgsim_lab.store import NewImage

pytestmark = pytest.mark.integration


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def test_expanded_search_ranks_better_and_never_returns_the_query_or_its_duplicates(store, tmp_path):
    model = get_model("color_hist")  # 512-d; the vectors are synthetic, only the key matters
    rng = np.random.default_rng(3)  # 8 overlapping classes in 32 dims, placed in 512
    centres = rng.standard_normal((8, 32))
    y = rng.integers(0, 8, 600)
    basis = np.linalg.qr(rng.standard_normal((model.dim, 32)))[0].T
    x = unit((centres[y] + 1.6 * rng.standard_normal((600, 32))) @ basis)
    store.register_model(model.key, model.dim, model.version)
    ids = [r.id for r in store.add_images(
        [NewImage(hashlib.sha256(f"e{i}".encode()).hexdigest(), f"e{i}", 1, 1, str(c), {model.key: v})
         for i, (v, c) in enumerate(zip(x, y, strict=True))])]
    # an exact copy of query 0's vector under another image: a duplicate, never a result
    copy = store.add_images([NewImage(hashlib.sha256(b"copy").hexdigest(), "copy", 1, 1, str(y[0]),
                                      {model.key: x[0]})])[0].id
    cfg = IndexConfig(snapshot_dir=tmp_path / "snap")
    plain = Searcher(store, model, index_config=cfg)
    qe = Searcher(store, model, index_config=cfg, expansion=ExpansionConfig(5, 3.0))
    k = 10
    prec = {"plain": [], "qe": []}
    for j in range(0, 600, 15):
        for name, s in (("plain", plain), ("qe", qe)):
            matches = s.search_id(ids[j], k=k)
            got = [m.id for m in matches]
            assert len(got) == k == len(set(got)), got
            assert ids[j] not in got
            if j == 0:
                assert copy not in got
            scores = [m.score for m in matches]
            assert scores == sorted(scores, reverse=True)
            prec[name].append(np.mean([m.record.label == str(y[j]) for m in matches]))
    assert np.mean(prec["qe"]) > np.mean(prec["plain"]) + 0.02, {k: np.mean(v) for k, v in prec.items()}


def test_cli_refuses_a_bad_expansion_by_name(tmp_path):
    img = tmp_path / "q.png"
    img.write_bytes(b"not read")
    out = subprocess.run([sys.executable, "-m", "imgsim_lab.cli", "search", str(img), "--expand", "-2",
                          "--kv", f"rocksdb:{tmp_path / 'kv'}"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "expansion n must be >= 0" in out.stderr, out.stderr
