"""Peers of ``imgsim bench search --peers`` in their own processes: results, logs, time limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from imgsim_lab.bench import _peers

pytest.importorskip("hnswlib")


def _data(n: int, dim: int, nq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qrows = rng.choice(n, nq, replace=False)
    q = x[qrows]
    order = np.argsort(-(q @ x.T), axis=1)
    truth = np.array([[r for r in row if r != qr][:_peers.K] for row, qr in zip(order, qrows, strict=True)])
    return x, q, qrows, truth


def test_hnswlib_peer_runs_in_its_own_process_and_logs(tmp_path: Path) -> None:
    x, q, qrows, truth = _data(500, 16, 20)
    out = _peers.run_peers(x, q, qrows, truth, x.nbytes // 10, str(tmp_path), peers=("hnswlib",),
                           latency_queries=20)
    res = out["hnswlib"]
    assert "error" not in res, res
    assert [r["setting"] for r in res["settings"]] == ["HNSW32 ef 64", "HNSW32 ef 128", "HNSW32 ef 256"]
    assert all(r["recall_at_10"] > 0.95 for r in res["settings"])
    assert Path(res["log"]) == tmp_path / "peer-hnswlib.log" and Path(res["log"]).is_file()


def test_a_peer_over_its_time_limit_is_stopped_and_its_log_shows_where_it_was(
        tmp_path: Path, monkeypatch) -> None:
    # 40k random 128-d vectors: an HNSW build of several seconds; the limit is 1.5 s
    monkeypatch.setenv("IMGSIM_PEER_STACK_DUMP_S", "0.2")
    x, q, qrows, truth = _data(40_000, 128, 5)
    out = _peers.run_peers(x, q, qrows, truth, x.nbytes // 10, str(tmp_path), peers=("hnswlib",),
                           latency_queries=5, timeout_s=1.5)
    res = out["hnswlib"]
    assert res["error"].startswith("timed out after 2 s")
    assert str(tmp_path / "peer-hnswlib.log") in res["error"]
    assert "most recent call first" in Path(res["log"]).read_text()
    assert not (tmp_path / "result-hnswlib.json").exists()
