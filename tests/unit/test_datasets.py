"""CIFAR-10 set-up from tiny fake archives, class-balanced subsets and folder sources."""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsim_lab.cli import build_parser
from imgsim_lab.cli import main as cli_main
from imgsim_lab.datasets import (
    CIFAR10_CLASSES,
    ENV_CIFAR10_SOURCE,
    MARKER,
    Cifar10SourceError,
    ImageItem,
    cifar10_items,
    cifar10_zip_images,
    default_cifar10_source,
    folder_items,
    is_complete,
    items_from_source,
    setup_cifar10,
)
from imgsim_lab.images import decode


@functools.cache
def jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buf, "JPEG")
    return buf.getvalue()


def make_zip(path: Path, per_class: dict[str, int], prefix: str = "",
             extra: dict[str, bytes] | None = None,
             counts: dict[str, dict[str, int]] | None = None) -> Path:
    """A zip in the cifar10-jpeg layout: ``[prefix]split/class/NNNN.jpg``, stored."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for split, n in per_class.items():
            for k, cls in enumerate(CIFAR10_CLASSES):
                for i in range((counts or {}).get(split, {}).get(cls, n)):
                    zf.writestr(f"{prefix}{split}/{cls}/{i:04d}.jpg", jpeg(k * 20))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def batch(labels: list[int], name: bytes) -> bytes:
    """One pickled batch like the official ones: bytes keys, N x 3072 uint8 rows.

    The official batches are Python 2 pickles whose str keys load as bytes with
    encoding="bytes"; protocol 4 writes bytes natively, so the loader sees the same.
    """
    data = np.stack([np.full(3072, 10 + 20 * lab, dtype=np.uint8) for lab in labels])
    data[:, :1024] = 200  # red plane differs, so channel order is checked
    return pickle.dumps({b"batch_label": name, b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * len(labels)}, protocol=4)


def make_tar(path: Path, per_batch: int = 2, skip: str | None = None,
             payload: bytes | None = None) -> Path:
    """A fake ``cifar-10-python.tar.gz``: ``per_batch`` images per class in every batch."""
    labels = [k for k in range(10) for _ in range(per_batch)][::-1]
    with tarfile.open(path, "w:gz") as tf:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        for name in names:
            if name == skip:
                continue
            if name == "batches.meta":
                raw = pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]})
            else:
                raw = payload or batch(labels, name.encode())
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    return path


@pytest.fixture
def small_zip(tmp_path: Path) -> Path:
    return make_zip(tmp_path / "cifar10-jpeg.zip", {"train": 6, "test": 2})


@pytest.fixture
def dataset(tmp_path: Path, small_zip: Path) -> Path:
    dest = tmp_path / "data" / "cifar10"
    setup_cifar10(dest, source=small_zip, progress=False)
    return dest


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- set-up


def test_setup_from_zip_then_second_run_is_skipped(tmp_path: Path, small_zip: Path) -> None:
    dest = tmp_path / "data" / "cifar10"
    first = setup_cifar10(dest, source=small_zip, progress=False)
    assert first["skipped"] is False and first["full"] is False
    assert first["counts"] == {"train": 60, "test": 20}
    assert first["per_class"]["train"]["cat"] == 6 and first["format"] == "jpeg-zip"
    assert (dest / "train" / "cat" / "0005.jpg").read_bytes() == jpeg(60)
    marker = json.loads((dest / MARKER).read_text())
    assert marker["source_sha256"] == first["source_sha256"] and len(marker["source_sha256"]) == 64
    mtime = (dest / MARKER).stat().st_mtime_ns
    t0 = time.perf_counter()
    second = setup_cifar10(dest, source=small_zip, progress=False)
    assert second["skipped"] is True and time.perf_counter() - t0 < 2.0
    assert second["counts"] == first["counts"]
    assert (dest / MARKER).stat().st_mtime_ns == mtime
    assert leftovers(dest.parent) == []


def test_setup_from_official_tar(tmp_path: Path) -> None:
    dest = tmp_path / "cifar10"
    summary = setup_cifar10(dest, source=make_tar(tmp_path / "c.tar.gz"), progress=False)
    assert summary["counts"] == {"train": 100, "test": 20} and summary["format"] == "python-tar"
    for k, cls in enumerate(CIFAR10_CLASSES):
        files = sorted((dest / "train" / cls).iterdir())
        assert [f.name for f in files][:3] == ["0000.png", "0001.png", "0002.png"]
        assert len(files) == 10
        img, info = decode(files[0].read_bytes())
        assert info.format == "PNG" and img.size == (32, 32)
        assert img.getpixel((5, 5)) == (200, 10 + 20 * k, 10 + 20 * k)  # R plane, then G, B


def test_tar_with_missing_batch_or_foreign_pickle_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "cifar10"
    with pytest.raises(Cifar10SourceError, match="data_batch_3"):
        setup_cifar10(dest, source=make_tar(tmp_path / "a.tar.gz", skip="data_batch_3"),
                      progress=False)
    evil = pickle.dumps({b"data": Path("x"), b"labels": []}, protocol=4)  # a non-numpy global
    with pytest.raises(Cifar10SourceError, match="pathlib"):
        setup_cifar10(dest, source=make_tar(tmp_path / "b.tar.gz", payload=evil),
                      progress=False)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_zip_images_read_one_split_in_class_order_without_extracting(tmp_path: Path) -> None:
    extra = {"top/train/unicorn/0000.jpg": b"x", "../evil.jpg": b"x"}
    src = make_zip(tmp_path / "z.zip", {"train": 2, "test": 1}, prefix="top/", extra=extra)
    train = cifar10_zip_images("train", src)
    assert [c for c, _ in train] == [c for c in CIFAR10_CLASSES for _ in range(2)]
    assert train[0][1] == jpeg(0) and train[-1][1] == jpeg(9 * 20)
    assert len(cifar10_zip_images("test", src)) == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.zip"]
    with pytest.raises(ValueError, match="split must be one of"):
        cifar10_zip_images("val", src)
    with pytest.raises(Cifar10SourceError, match="no CIFAR-10 zip at"):
        cifar10_zip_images("train", tmp_path / "missing.zip")


def test_prefixed_zip_unsafe_and_junk_members_ignored(tmp_path: Path) -> None:
    extra = {"../evil.jpg": b"x", "top/train/cat/../../../evil2.jpg": b"x",
             "README.txt": b"hi", "__MACOSX/train/cat/._0000.jpg": b"x",
             "top/train/unicorn/0000.jpg": b"x"}
    src = make_zip(tmp_path / "z.zip", {"train": 1, "test": 1}, prefix="top/", extra=extra)
    dest = tmp_path / "out" / "cifar10"
    assert setup_cifar10(dest, source=src, progress=False)["counts"] == {"train": 10, "test": 10}
    assert not list(tmp_path.rglob("evil*")) and not (dest / "train" / "unicorn").exists()


def test_full_size_archive_with_short_class_fails(tmp_path: Path) -> None:
    dest = tmp_path / "cifar10"
    src = make_zip(tmp_path / "z.zip", {"train": 1, "test": 1})
    with pytest.raises(Cifar10SourceError, match="counts are wrong"):
        setup_cifar10(dest, source=src, progress=False, require_full=True)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_corrupt_member_mid_extraction_leaves_nothing(tmp_path: Path) -> None:
    src = make_zip(tmp_path / "z.zip", {"train": 3, "test": 1},
                   extra={"test/truck/9999.jpg": b"UNIQUE-PAYLOAD-" * 10})
    raw = bytearray(src.read_bytes())
    raw[raw.index(b"UNIQUE-PAYLOAD-") + 3] ^= 0xFF  # breaks that member's CRC
    src.write_bytes(bytes(raw))
    dest = tmp_path / "cifar10"
    with pytest.raises(zipfile.BadZipFile):
        setup_cifar10(dest, source=src, progress=False)
    assert not dest.exists() and not is_complete(dest) and leftovers(tmp_path) == []


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftover_of_killed_run_is_not_complete_and_is_cleaned(tmp_path: Path,
                                                              small_zip: Path) -> None:
    dest = tmp_path / "cifar10"
    stale = tmp_path / f".cifar10.tmp-{dead_pid()}-abcd"
    (stale / "train" / "cat").mkdir(parents=True)
    (stale / MARKER).write_text("{}")  # killed after the marker, before the rename
    assert not is_complete(dest)
    with pytest.raises(FileNotFoundError, match="setup-cifar10"):
        cifar10_items("train", root=dest)
    setup_cifar10(dest, source=small_zip, progress=False)
    assert is_complete(dest) and not stale.exists() and leftovers(tmp_path) == []


@pytest.mark.faults
def test_sigkill_during_extraction_never_looks_complete(tmp_path: Path) -> None:
    src = make_zip(tmp_path / "big.zip", {"train": 200, "test": 0})
    dest = tmp_path / "cifar10"
    code = ("import sys; from pathlib import Path; from imgsim_lab.datasets import setup_cifar10;"
            "setup_cifar10(Path(sys.argv[1]), source=sys.argv[2], progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest), str(src)])
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".cifar10.tmp-*/train/truck")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip("extraction finished before it could be killed")
        time.sleep(0.005)
    if not list(tmp_path.glob(".cifar10.tmp-*/train/truck")):
        proc.kill()
        proc.wait()
        pytest.skip("extraction did not start within 60 s (machine overloaded)")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not is_complete(dest) and not dest.exists()
    assert list(tmp_path.glob(".cifar10.tmp-*"))  # the half extraction stays hidden aside
    assert setup_cifar10(dest, source=src, progress=False)["counts"]["train"] == 2000
    assert leftovers(tmp_path) == []


def test_foreign_directory_is_not_overwritten_without_force(tmp_path: Path,
                                                            small_zip: Path) -> None:
    dest = tmp_path / "cifar10"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        setup_cifar10(dest, source=small_zip, progress=False)
    assert (dest / "mine.txt").exists()
    setup_cifar10(dest, source=small_zip, progress=False, force=True)
    assert is_complete(dest) and not (dest / "mine.txt").exists()


def test_source_from_env_and_default(tmp_path: Path, small_zip: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CIFAR10_SOURCE, str(small_zip))
    assert default_cifar10_source() == small_zip
    summary = setup_cifar10(tmp_path / "cifar10", progress=False)
    assert summary["source"] == str(small_zip)
    monkeypatch.setenv(ENV_CIFAR10_SOURCE, str(tmp_path / "missing.zip"))
    with pytest.raises(Cifar10SourceError, match="missing.zip"):
        setup_cifar10(tmp_path / "other", progress=False)
    with pytest.raises(Cifar10SourceError, match="neither"):
        setup_cifar10(tmp_path / "other", source=tmp_path / "cifar10" / MARKER, progress=False)


def test_cli_subcommand(tmp_path: Path, small_zip: Path, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("IMGSIM_DATA_DIR", str(tmp_path / "data"))
    assert "setup-cifar10" in build_parser().format_help()
    args = ["setup-cifar10", "--source", str(small_zip), "--no-progress"]
    assert cli_main(args) == 0
    assert "set up in" in capsys.readouterr().out
    assert is_complete(tmp_path / "data" / "cifar10")
    assert cli_main(args) == 0
    assert "already set up" in capsys.readouterr().out
    assert cli_main(["setup-cifar10", "--source", str(tmp_path / "nope.zip"),
                     "--dest", str(tmp_path / "x")]) == 2


# --------------------------------------------------------------------------- items


def test_cifar10_items_balanced_and_deterministic(dataset: Path) -> None:
    items = cifar10_items("train", root=dataset, limit=25, seed=7)
    assert len(items) == 25 and items == cifar10_items("train", root=dataset, limit=25, seed=7)
    assert [it.source for it in items] == sorted(it.source for it in items)
    per_class = {c: sum(it.label == c for it in items) for c in CIFAR10_CLASSES}
    assert sorted(per_class.values()) == [2] * 5 + [3] * 5
    first = items[0]
    assert first.source == f"cifar10/train/{first.label}/{first.path.name}"
    assert first.read_bytes() == first.path.read_bytes()
    bigger = cifar10_items("train", root=dataset, limit=40, seed=7)
    assert {it.source for it in items} <= {it.source for it in bigger}  # nested subsets
    others = [cifar10_items("train", root=dataset, limit=25, seed=s) for s in range(1, 4)]
    assert any(o != items for o in others)
    assert len(cifar10_items("train", root=dataset)) == 60
    assert len(cifar10_items("test", root=dataset, limit=1000)) == 20
    assert cifar10_items("test", root=dataset, limit=0) == []
    with pytest.raises(ValueError):
        cifar10_items("valid", root=dataset)


def test_cifar10_items_fill_from_other_classes(tmp_path: Path) -> None:
    src = make_zip(tmp_path / "z.zip", {"train": 5, "test": 1},
                   counts={"train": {"cat": 1, "dog": 0}})
    dest = tmp_path / "cifar10"
    setup_cifar10(dest, source=src, progress=False)
    items = cifar10_items("train", root=dest, limit=30, seed=0)
    per_class = {c: sum(it.label == c for it in items) for c in CIFAR10_CLASSES}
    assert len(items) == 30 and per_class["cat"] == 1 and per_class["dog"] == 0
    assert max(per_class.values()) - min(v for c, v in per_class.items()
                                         if c not in ("cat", "dog")) <= 1


def test_folder_items(tmp_path: Path) -> None:
    root = tmp_path / "custom_images"
    for rel in ("top.bmp", "cats/a.jpg", "cats/deep/b.png", "dogs/c.webp", "notes.txt",
                ".hidden.jpg", ".git/d.jpg", "cats/.DS_Store"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    os.mkfifo(root / "cats" / "pipe")
    (root / "dangling").symlink_to(root / "missing")
    items = folder_items(root, label_from_parent=True)
    assert [(it.source, it.label) for it in items] == [
        ("custom_images/cats/a.jpg", "cats"), ("custom_images/cats/deep/b.png", "deep"),
        ("custom_images/dogs/c.webp", "dogs"), ("custom_images/notes.txt", None),
        ("custom_images/top.bmp", None)]
    assert all(isinstance(it, ImageItem) and it.read_bytes() == b"x" for it in items)
    assert [it.label for it in folder_items(root)] == [None] * 5
    assert [it.source for it in folder_items(root, recursive=False)] == [
        "custom_images/notes.txt", "custom_images/top.bmp"]
    with pytest.raises(FileNotFoundError):
        folder_items(tmp_path / "absent")


def test_items_from_source(dataset: Path, tmp_path: Path) -> None:
    assert len(items_from_source("cifar10:test", root=dataset)) == 20
    assert items_from_source("cifar10", root=dataset, limit=10) == cifar10_items(
        "train", root=dataset, limit=10)
    folder = tmp_path / "pics"
    (folder / "a").mkdir(parents=True)
    for i in range(6):
        (folder / "a" / f"{i}.jpg").write_bytes(b"x")
    got = items_from_source(folder, limit=3, seed=1)
    assert len(got) == 3 and got == items_from_source(str(folder), limit=3, seed=1)
    assert {it.label for it in got} == {"a"}


def test_repo_default_source_path() -> None:
    from imgsim_lab.config import project_root

    expected = (project_root().parent / "shared" / "datasets" / "cifar10-jpeg.zip").resolve()
    if ENV_CIFAR10_SOURCE not in os.environ:
        assert default_cifar10_source() == (expected if expected.is_file() else None)
