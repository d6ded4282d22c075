"""Fashion-MNIST set-up from tiny idx files written here (real parsing, real PNG files)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsim_lab import fashion_mnist
from imgsim_lab.cli import main as cli_main
from imgsim_lab.fashion_mnist import (
    APT_PACKAGE,
    FMNIST_CLASSES,
    IDX_FILES,
    FashionMnistSourceError,
    read_idx,
    setup_fashion_mnist,
)


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array: 0,0, type 0x08, ndim, big-endian int32 dims, data."""
    head = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.ascontiguousarray(array, np.uint8).tobytes()


def write_source(root: Path, n: dict[str, int] | None = None, gz: bool = True, hw: int = 5,
                 seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Four idx files (gzipped or plain) with random pixels; labels cycle through 0..9."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    data = {}
    for split, (img_stem, lbl_stem) in IDX_FILES.items():
        count = (n or {"train": 23, "test": 12})[split]
        images = rng.integers(0, 256, (count, hw, hw), dtype=np.uint8)
        labels = (np.arange(count) * 7 % 10).astype(np.uint8)
        for stem, arr in ((img_stem, images), (lbl_stem, labels)):
            raw = idx_bytes(arr)
            if gz:
                (root / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (root / stem).write_bytes(raw)
        data[split] = (images, labels)
    return data


@pytest.mark.parametrize("gz", [True, False])
def test_setup_writes_every_image_as_png_under_its_class(tmp_path: Path, gz: bool) -> None:
    data = write_source(tmp_path / "src", gz=gz)
    dest = tmp_path / "data" / "fashion-mnist"
    summary = setup_fashion_mnist(dest, source=tmp_path / "src", progress=False)
    assert summary["counts"] == {"train": 23, "test": 12} and summary["full"] is False
    assert summary["skipped"] is False
    marker = json.loads((dest / ".complete.json").read_text())
    assert marker["per_class"] == summary["per_class"]
    for split, (images, labels) in data.items():
        # the k-th image of a class in file order is <class>/<k:05d>.png, pixels unchanged
        seen = dict.fromkeys(FMNIST_CLASSES, 0)
        for pixels, label in zip(images, labels, strict=True):
            cls = FMNIST_CLASSES[label]
            with Image.open(dest / split / cls / f"{seen[cls]:05d}.png") as im:
                assert im.mode == "L" and im.size == (5, 5)
                assert np.array_equal(np.asarray(im), pixels)
            seen[cls] += 1
        on_disk = {c: len(list((dest / split / c).glob("*.png"))) for c in FMNIST_CLASSES}
        assert on_disk == seen == marker["per_class"][split]
    # nothing but the dataset next to it (the temporary directory was renamed)
    assert [p.name for p in dest.parent.iterdir()] == ["fashion-mnist"]


def test_second_run_is_skipped_and_force_rewrites(tmp_path: Path) -> None:
    write_source(tmp_path / "src")
    dest = tmp_path / "fm"
    setup_fashion_mnist(dest, source=tmp_path / "src", progress=False)
    assert setup_fashion_mnist(dest, source=tmp_path / "src", progress=False)["skipped"] is True
    write_source(tmp_path / "src", n={"train": 3, "test": 2})
    again = setup_fashion_mnist(dest, source=tmp_path / "src", progress=False, force=True)
    assert again["counts"] == {"train": 3, "test": 2}
    assert sum(1 for _ in (dest / "train").rglob("*.png")) == 3


def test_missing_files_name_the_debian_package(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_source(src)
    (src / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FashionMnistSourceError, match=rf"t10k-labels-idx1-ubyte.*{APT_PACKAGE}"):
        setup_fashion_mnist(tmp_path / "fm", source=src, progress=False)
    with pytest.raises(FashionMnistSourceError, match=rf"does not exist.*{APT_PACKAGE}"):
        setup_fashion_mnist(tmp_path / "fm", source=tmp_path / "nowhere", progress=False)
    assert not (tmp_path / "fm").exists()


def test_default_source_without_the_package_says_apt_get(tmp_path: Path, monkeypatch) -> None:
    # the default source is Debian's directory; point it at one that is absent (no package)
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "usr-share-datasets-fashion-mnist")
    with pytest.raises(FashionMnistSourceError, match=rf"apt-get install -y {APT_PACKAGE}"):
        setup_fashion_mnist(tmp_path / "fm", progress=False)


def _corrupt(tmp_path: Path, stem: str, raw: bytes) -> Path:
    src = tmp_path / "src"
    write_source(src, gz=False)
    (src / stem).write_bytes(raw)
    return src


@pytest.mark.parametrize(("raw", "message"), [
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 23, 5, 5) + bytes(23 * 25 - 1), "truncated or padded"),
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 23, 5, 5) + bytes(23 * 25 + 1), "truncated or padded"),
    (b"\x00\x00\x08\x03" + struct.pack(">2I", 23, 5), "truncated idx header"),
    (b"\x00\x00\x0d\x03" + struct.pack(">3I", 23, 5, 5) + bytes(23 * 25 * 4), "type 0x0d"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 23) + bytes(23), "1 dimensions, expected 3"),
    (b"PK\x03\x04" + bytes(100), "not an idx file"),
    (b"\x1f\x8b\x08\x00broken", "broken gzip"),
])
def test_malformed_idx_is_rejected_before_anything_is_written(tmp_path: Path, raw: bytes,
                                                             message: str) -> None:
    src = _corrupt(tmp_path, "train-images-idx3-ubyte", raw)
    with pytest.raises(FashionMnistSourceError, match=message):
        setup_fashion_mnist(tmp_path / "fm", source=src, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_labels_must_match_images_and_be_classes(tmp_path: Path) -> None:
    src = _corrupt(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.zeros(22, np.uint8)))
    with pytest.raises(FashionMnistSourceError, match="23 images but .* 22 labels"):
        setup_fashion_mnist(tmp_path / "fm", source=src, progress=False)
    src = _corrupt(tmp_path, "train-labels-idx1-ubyte", idx_bytes(np.full(23, 10, np.uint8)))
    with pytest.raises(FashionMnistSourceError, match="label 10 outside 0..9"):
        setup_fashion_mnist(tmp_path / "fm", source=src, progress=False)


def test_read_idx_round_trip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    assert np.array_equal(read_idx(tmp_path / "a", 3), arr)


def test_cli_sets_up_and_exits_2_naming_the_package(tmp_path: Path, capsys) -> None:
    write_source(tmp_path / "src")
    dest = tmp_path / "fm"
    assert cli_main(["setup-fashion-mnist", "--source", str(tmp_path / "src"), "--dest", str(dest),
                     "--no-progress"]) == 0
    assert "23 train, 12 test" in capsys.readouterr().out
    assert cli_main(["setup-fashion-mnist", "--source", str(tmp_path / "none"), "--dest",
                     str(tmp_path / "fm2"), "--no-progress"]) == 2
