"""The forced-rebuild A/B scripts on a real embedded store: they run and report what they measured."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from imgsim_lab.bench.rebuild import forced_rebuild
from imgsim_lab.index.synthetic import SyntheticSpec, write_to_store
from imgsim_lab.store import open_store

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
N, DIM = 3000, 64


@pytest.fixture()
def kv(tmp_path):
    url = f"rocksdb:{tmp_path / 'kv'}"
    store = open_store(url, "ab")
    write_to_store(store, "syn", N, SyntheticSpec(dim=DIM, seed=3), progress=False)
    store.close()
    return url


def test_forced_rebuild_builds_the_factory_over_every_vector(kv, caplog):
    store = open_store(kv, "ab")
    try:
        with caplog.at_level("INFO", logger="imgsim_lab.index.similarity"):
            t = forced_rebuild(store, "syn", "RaBitQ", threads=1)
    finally:
        store.close()
    assert {"sample", "train", "add", "read_wait", "stream", "total"} <= set(t)
    assert 0 < t["add"] <= t["stream"] <= t["total"]
    assert f"built RaBitQ over {N} vectors" in caplog.text


def _run(script: str, *args: str, out: Path) -> dict:
    argv = sys.argv
    sys.argv = [script, *args, "--rounds", "1", "--json", str(out)]
    try:
        runpy.run_path(str(SCRIPTS / script), run_name="__main__")
    finally:
        sys.argv = argv
    return json.loads(out.read_text())


def test_rabitq_blocks_script_reports_both_encoders(kv, tmp_path):
    d = _run("bench_rabitq_blocks.py", "--kv", kv, "--namespace", "ab", "--model", "syn",
             out=tmp_path / "b.json")
    assert d["n"] == N and d["chunk"] == N  # fewer vectors than one chunk: all of them
    arms = {r["arm"] for r in d["rows"]}
    assert arms == {"read_only", "faiss_sa_encode", "blocked", "whole_chunk"}
    s = d["summary"]
    assert set(s["rebuild_vectors_per_s_median"]) == {"blocked", "whole_chunk"}
    assert all(v > 0 for v in s["encode_us_per_vector"].values())
    assert s["rebuild_blocked_speedup_vs_whole_chunk"] > 0


def test_build_threads_script_reports_both_thread_counts(kv, tmp_path):
    d = _run("bench_build_threads.py", "--kv", kv, "--namespace", "ab", "--model", "syn",
             "--factory", "RaBitQfs_64", out=tmp_path / "t.json")
    assert d["n"] == N and sorted(r["threads"] for r in d["rows"]) == [1, 2]
    assert d["summary"]["threads1"]["vectors_per_s_median"] > 0
