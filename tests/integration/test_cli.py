"""The ``imgsim`` command line: info, flush, bench store (small sizes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgsim_lab.store import NewImage, open_store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def imgsim(*args: str, input: str | None = None, tmp: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **({"IMGSIM_DATA_DIR": str(tmp)} if tmp else {})}
    return subprocess.run([sys.executable, "-m", "imgsim_lab.cli", *args], capture_output=True, text=True,
                          input=input, timeout=300, env=env)


def _fill(url: str, ns: str, n: int) -> None:
    with open_store(url, ns) as s:
        s.register_model("m", 3, "v1")
        s.add_images([NewImage(hashlib.sha256(f"{ns}{i}".encode()).hexdigest(), f"{i}.png", 4, 4,
                               embeddings={"m": np.ones(3, np.float32)}) for i in range(n)])


def test_info_json(store_url, tmp_path):
    _fill(store_url, "infons", 5)
    out = imgsim("info", "--kv", store_url, "--namespace", "infons", "--json", tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["images"] == 5 and info["models"] == {"m": {"dim": 3, "count": 5, "version": "v1"}}
    text = imgsim("info", "--kv", store_url, "--namespace", "infons", tmp=tmp_path)
    assert "images     5" in text.stdout and "m: 5 embeddings, dim 3" in text.stdout
    with open_store(store_url, "infons") as s:
        s.flush()


def test_flush_removes_one_namespace_and_asks_first(store_url, tmp_path):
    _fill(store_url, "keep", 3)
    _fill(store_url, "gone", 4)
    refused = imgsim("flush", "--kv", store_url, "--namespace", "gone", tmp=tmp_path)
    assert refused.returncode == 1 and "without --yes" in refused.stderr
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "flush_kvrocks.py"), "--kv", store_url,
                          "--namespace", "gone", "--yes"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "removed" in out.stdout and "gone" in out.stdout
    removed = int(out.stdout.split("removed ")[1].split()[0])
    assert removed >= 4 * 3
    with open_store(store_url, "gone") as s:
        assert s.count() == 0
    with open_store(store_url, "keep") as s:
        assert s.count() == 3
        s.flush()


def test_bench_store_json_fields(store_url, tmp_path):
    out = imgsim("bench", "store", "--kv", store_url, "--n", "600", "--dim", "64", "--json",
                 str(tmp_path / "b.json"), tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "b.json").read_text())
    for key in ("backend", "n", "dim", "bulk_write_per_s", "bulk_read_per_s", "naive_write_per_s",
                "naive_read_per_s", "bulk_write_mb_per_s", "bulk_read_mb_per_s"):
        assert key in res
    assert res["n"] == 600 and res["dim"] == 64 and res["bulk_read_per_s"] > 0


def test_unknown_url_is_a_clear_error(tmp_path):
    out = imgsim("info", "--kv", "mysql://u:pw@h/0", tmp=tmp_path)
    assert out.returncode == 2 and "unknown store scheme" in out.stderr and "pw@" not in out.stderr
