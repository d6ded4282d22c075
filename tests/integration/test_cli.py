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


# --------------------------------------------------------------------------- for people (issue 16)


def _pngs(root: Path, n: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for i in range(n):
        d = root / f"c{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")


@pytest.fixture
def photos_store(tmp_path: Path) -> tuple[str, Path, Path]:
    """A folder outside the data dir, ingested with ``pixels``: (store URL, data dir, folder)."""
    photos = tmp_path / "home" / "photos"
    _pngs(photos, 12)
    (photos / "c0" / "notes.txt").write_text("this is not an image\n")
    (photos / "c1" / "copy.png").write_bytes((photos / "c1" / "1.png").read_bytes())
    data = tmp_path / "data"
    url = f"rocksdb:{tmp_path / 'kv'}"
    out = imgsim("ingest", str(photos), "--model", "pixels", "--kv", url, "--json", str(tmp_path / "s.json"),
                 tmp=data)
    assert out.returncode == 0, out.stderr
    # a short human summary on stdout; the JSON goes to --json
    assert "ingested 14 images" in out.stdout and "12 added, 1 duplicates, 1 rejected (1 not_an_image)" \
        in out.stdout and "index pixels: exact, 12 vectors" in out.stdout, out.stdout
    assert "{" not in out.stdout
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["added"] == 12 and summary["rejected"] == {"not_an_image": 1}
    assert out.stderr.count("saved snapshot") == 1, out.stderr
    assert "AVX512" not in out.stderr and "Loading faiss" not in out.stderr
    assert "rejected photos/c0/notes.txt: this is not an image file" in out.stderr  # human reason
    assert "b'" not in out.stderr
    assert "duplicate photos/c1/copy.png (same bytes as an earlier file of this run)" in out.stderr
    return url, data, photos


def test_search_prints_paths_that_open(photos_store, tmp_path: Path) -> None:
    url, data, photos = photos_store
    query = photos / "c1" / "1.png"
    (photos / "c0" / "0.png").unlink()
    out = imgsim("search", str(query), "--model", "pixels", "--kv", url, "--k", "11", tmp=data)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if "score" in ln]
    assert len(lines) == 11
    missing = [ln for ln in lines if "file not found" in ln]
    assert len(missing) == 1 and str(photos / "c0" / "0.png") in missing[0]
    for ln in lines:
        if ln not in missing:
            assert Path(ln.split()[-1]).is_file(), ln  # an absolute path that opens
    as_json = json.loads(imgsim("search", str(query), "--model", "pixels", "--kv", url, "--json",
                                tmp=data).stdout)
    assert all(Path(m["path"]).is_absolute() for m in as_json["matches"])


def test_user_mistakes_are_one_line_and_exit_2(photos_store, tmp_path: Path) -> None:
    url, data, photos = photos_store
    cases = {
        ("search", "nosuch.jpg"): "no such image file: nosuch.jpg",
        ("search", str(photos)): "is a folder: search takes one image file",
        ("ingest", "/no/such/dir", "--model", "pixels"): "image folder /no/such/dir does not exist",
        ("ingest", "cifar10:val", "--model", "pixels"): "unknown CIFAR-10 split 'val'",
        ("search", str(photos / "c1" / "1.png"), "--model", "nosuchmodel"): "unknown model 'nosuchmodel'",
        ("search", str(photos / "c1" / "1.png"), "--model", "color_hist"):
            "has no color_hist embeddings; models present: pixels (12 images). Add them with: imgsim "
            f"ingest SOURCE --model color_hist --kv {url}",
        ("search", str(photos / "c0" / "notes.txt"), "--model", "pixels"):
            "was rejected: this is not an image file",
    }
    from imgsim_lab.models import available_models

    if "resnet50" not in available_models(offline_only=True):  # no weights here: its own message
        cases[("ingest", str(photos), "--model", "resnet50")] = "resnet50"
    for args, expected in cases.items():
        out = imgsim(*args, "--kv", url, tmp=data)
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert expected in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        assert "b'" not in out.stderr
        assert len([ln for ln in out.stderr.splitlines() if ln.startswith("imgsim ")]) == 1, out.stderr
    verbose = imgsim("-v", "search", "nosuch.jpg", "--kv", url, tmp=data)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr  # -v shows it
    zero = imgsim("search", str(photos / "c1" / "1.png"), "--k", "0", "--kv", url, tmp=data)
    assert zero.returncode == 2 and "--k: must be at least 1" in zero.stderr
    helped = imgsim("ingest", "--help", tmp=data).stdout
    assert "refuse image files larger than N bytes" in helped
    assert "refuse images of more than N pixels" in helped


def test_info_points_to_the_namespaces_with_data(photos_store, tmp_path: Path) -> None:
    url, data, _ = photos_store
    out = imgsim("info", "--kv", url, "--namespace", "fashion-train-2000-s0", tmp=data)
    assert out.returncode == 0, out.stderr
    assert ("namespace 'fashion-train-2000-s0' is empty; this store has data in: imgsim (12 images)"
            in out.stdout)


def test_commands_never_create_data_in_the_working_directory(tmp_path: Path) -> None:
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    env = {**os.environ, "IMGSIM_DATA_DIR": str(tmp_path / "data")}
    kv = f"rocksdb:{tmp_path / 'kv'}"
    out = subprocess.run([sys.executable, "-m", "imgsim_lab.cli", "info", "--kv", kv], capture_output=True,
                         text=True, timeout=120, env=env, cwd=cwd)
    assert out.returncode in (0, 2), out.stderr
    assert not (cwd / "data").exists()
    assert list((tmp_path / "data" / "logs").glob("imgsim-info-*.log"))


def test_app_on_a_busy_port_says_so_and_how_to_pick_another(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = imgsim("app", "--port", str(port), "--kv", f"rocksdb:{tmp_path / 'kv'}", tmp=tmp_path)
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in out.stderr and "--port" in out.stderr
    assert "http://" not in out.stdout and "CRITICAL" not in out.stderr


def test_bench_help_is_its_own(tmp_path: Path) -> None:
    out = imgsim("bench", "store", "--help", tmp=tmp_path)
    assert out.returncode == 0 and "imgsim bench store" in out.stdout and "--json" in out.stdout


def test_ingest_with_not_a_single_valid_image_exits_3(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"this is not an image")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    kv = f"rocksdb:{tmp_path / 'kv'}"
    out = imgsim("ingest", str(folder), "--model", "pixels", "--kv", kv, "--no-index", tmp=tmp_path)
    assert out.returncode == 3, out.stderr
    assert "not a single valid image among 2 input(s)" in out.stderr
    assert "Traceback" not in out.stderr
    _pngs(folder, 1)  # one valid image among the junk: a normal run
    ok = imgsim("ingest", str(folder), "--model", "pixels", "--kv", kv, "--no-index", tmp=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "1 added" in ok.stdout and "2 rejected" in ok.stdout
