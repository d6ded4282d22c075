"""The ingestion pipeline end to end: real files, real models, both store backends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from imagegen import image_bytes, make_folder

from imgsim_lab.datasets import folder_items
from imgsim_lab.images import sha256_hex
from imgsim_lab.ingest import ingest
from imgsim_lab.models import get_model
from imgsim_lab.store import open_store

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pixels():
    return get_model("pixels")


def test_ingest_adds_skips_duplicates_and_rejects_with_reasons(store, tmp_path, pixels):
    folder = make_folder(tmp_path / "imgs", 30, duplicates=4, bad=True)
    items = folder_items(folder, label_from_parent=True)
    s = ingest(items, store, [pixels], batch_size=8, progress=False)
    assert s.added == 30 and s.duplicates == 4
    assert dict(s.rejected) == {"empty": 1, "not_an_image": 1, "corrupt": 1, "too_small": 1}
    assert store.count() == 30 and store.info()["models"]["pixels"]["count"] == 30
    recs = [r for chunk in store.iter_records() for r in chunk]
    assert {r.label for r in recs} == {"red", "green", "blue"}
    assert all(r.width == 32 and r.height == 32 for r in recs)
    # the stored vector is the model's vector of the file
    r0 = next(r for r in recs if r.source.endswith("img0007.png"))
    _, vec = store.get_embeddings("pixels", [r0.id])
    from imgsim_lab.images import decode

    img, _ = decode(image_bytes(7))
    np.testing.assert_allclose(vec[0], pixels.embed_images([img])[0], atol=1e-6)
    # re-ingesting is idempotent and skips everything before decoding
    again = ingest(items, store, [pixels], batch_size=8, progress=False)
    assert again.added == 0 and again.duplicates == 34 and store.count() == 30


def test_a_second_model_embeds_existing_records_without_new_ones(store, tmp_path, pixels):
    folder = make_folder(tmp_path / "imgs", 12)
    items = folder_items(folder)
    ingest(items, store, [pixels], progress=False)
    hist = get_model("color_hist")
    s = ingest(items, store, [pixels, hist], progress=False)
    assert s.added == 0 and s.embedded == 12 and s.duplicates == 0
    info = store.info()
    assert info["images"] == 12
    assert {k: v["count"] for k, v in info["models"].items()} == {"pixels": 12, "color_hist": 12}


def _cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgsim_lab.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300, **kw)


def test_cli_ingest_then_search_never_returns_the_query(tmp_path):
    folder = make_folder(tmp_path / "imgs", 24)
    kv = f"rocksdb:{tmp_path / 'kv'}"
    env = {"IMGSIM_DATA_DIR": str(tmp_path / "data")}
    out = _cli("ingest", str(folder), "--model", "pixels", "--kv", kv, "--json", str(tmp_path / "s.json"),
               env=env)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["added"] == 24 and summary["duplicates"] == 0 and summary["rejected"] == {}
    assert summary["seconds"] > 0
    assert list((tmp_path / "data" / "logs").glob("imgsim-ingest-*.log"))
    query = folder / "green" / "img0004.png"
    res = _cli("search", str(query), "--model", "pixels", "--k", "5", "--kv", kv, "--json", env=env)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["duplicate"] is True and got["stored_id"] is not None
    ids = [m["id"] for m in got["matches"]]
    assert len(ids) == 5 == len(set(ids)) and got["stored_id"] not in ids
    assert all(m["source"] != "imgs/green/img0004.png" for m in got["matches"])
    assert [m["score"] for m in got["matches"]] == sorted((m["score"] for m in got["matches"]), reverse=True)
    assert sum(m["label"] == "green" for m in got["matches"]) >= 4  # colour classes are easy
    # a query that is not stored: all 5 results are stored images
    new = tmp_path / "new.png"
    new.write_bytes(image_bytes(500))
    res = _cli("search", str(new), "--model", "pixels", "--kv", kv, "--json", env=env)
    got = json.loads(res.stdout)
    assert got["duplicate"] is False and len(got["matches"]) == 5
    text = _cli("search", str(new), "--model", "pixels", "--kv", kv, env=env)
    assert text.returncode == 0 and "score" in text.stdout
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    res = _cli("search", str(bad), "--model", "pixels", "--kv", kv, env=env)
    assert res.returncode == 2 and "rejected" in res.stderr  # one line, exit 2 (a user mistake)


def _state(url: str) -> dict[str, bytes]:
    """sha256 -> stored vector bytes, plus a consistency check of counts."""
    with open_store(url, read_only=url.startswith("rocksdb:")) as s:
        recs = [r for chunk in s.iter_records() for r in chunk]
        ids, vecs = s.get_embeddings("pixels", [r.id for r in recs])
        assert s.count() == len(recs) == len(ids)
        assert s.info()["models"]["pixels"]["count"] == len(ids)
        return {r.sha256: v.tobytes() for r, v in zip(recs, vecs, strict=True)}


N_KILL = 1500


def test_killed_ingest_resumes_to_the_same_final_state(tmp_path):
    folder = make_folder(tmp_path / "imgs", N_KILL)
    env = {"IMGSIM_DATA_DIR": str(tmp_path / "data")}
    full = f"rocksdb:{tmp_path / 'full'}"
    assert _cli("ingest", str(folder), "--model", "pixels", "--kv", full, "--batch-size", "8",
                "--no-index", env=env).returncode == 0
    part = f"rocksdb:{tmp_path / 'part'}"
    proc = subprocess.Popen([sys.executable, "-m", "imgsim_lab.cli", "ingest", str(folder), "--model",
                             "pixels", "--kv", part, "--batch-size", "8", "--no-index"],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it midway, once something is stored
        time.sleep(0.02)
        if (tmp_path / "part" / "CURRENT").exists():
            try:
                with open_store(part, read_only=True) as s:
                    if 16 <= s.count() < N_KILL:
                        break
            except Exception:  # noqa: BLE001 - store still being created
                pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open_store(part, read_only=True) as s:
        assert s.count() < N_KILL, "the run finished before it could be killed"
    assert _cli("ingest", str(folder), "--model", "pixels", "--kv", part, "--no-index",
                env=env).returncode == 0
    assert _state(part) == _state(full)
    assert len(_state(full)) == N_KILL
    assert sha256_hex(image_bytes(3)) in _state(part)


def test_a_failing_forward_stops_the_reader_and_writes_nothing_half(store, tmp_path):
    """The embed stage raising ends ingest with that error, the reader thread stopped."""
    import threading

    from imgsim_lab.models.baselines import Pixels

    class Broken(Pixels):
        name, version = "pixels_broken", "broken-v1"

        def _forward(self, batch):
            raise RuntimeError("forward failed")

    folder = make_folder(tmp_path / "imgs", 40)
    items = folder_items(folder) * 20  # many more chunks than the reader may run ahead
    with pytest.raises(RuntimeError, match="forward failed") as exc:
        ingest(items, store, [Broken()], batch_size=4, progress=False)
    deadline = time.time() + 5
    while time.time() < deadline and any(t.name == "imgsim-ingest-reader" and t.is_alive()
                                         for t in threading.enumerate()):
        time.sleep(0.05)
    alive = [t.name for t in threading.enumerate() if t.name == "imgsim-ingest-reader" and t.is_alive()]
    assert alive == [], "the reader thread outlived the failed ingest"
    assert store.count() == 0
    del exc
