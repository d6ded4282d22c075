"""Fashion-MNIST (70,000 28x28 grayscale images, 10 classes) as a second real collection.

Debian ships the four idx files in ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``).
``setup_fashion_mnist`` parses them (plain or gzipped; magic, shape and length checked, no
pickle) and writes ``<dest>/{train,test}/<class>/NNNNN.png`` plus the ``.complete.json``
marker, into a temporary directory next to ``dest`` renamed at the end (as CIFAR-10's
set-up does), so an interrupted run never leaves a directory that looks complete.
``imgsim ingest data/fashion-mnist/train`` then ingests it like any labelled folder.
"""

from __future__ import annotations

import gzip
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from imgsim_lab.config import data_dir
from imgsim_lab.datasets import MARKER, SPLITS, publish, read_marker, staging
from imgsim_lab.images import sha256_file

log = logging.getLogger(__name__)

#: Folder names of the ten classes, in label order (0 = T-shirt/top … 9 = Ankle boot).
FMNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "ankle_boot")
APT_PACKAGE = "dataset-fashion-mnist"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: (images, labels) idx file stems per split, as Zalando and Debian name them.
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FULL_COUNTS = {"train": 60_000, "test": 10_000}
_MAX_ITEMS = 10_000_000  # an idx header claiming more is not Fashion-MNIST


class FashionMnistSourceError(RuntimeError):
    """No usable Fashion-MNIST source: missing or malformed idx files."""


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an idx file (gzipped or not) with ``ndim`` dimensions.

    Layout: two zero bytes, type code 0x08 (unsigned byte), the number of dimensions, one
    big-endian int32 per dimension, then exactly the product of the dimensions in bytes.
    """
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise FashionMnistSourceError(f"{path}: broken gzip stream ({exc})") from exc
    if len(raw) < 4 or raw[:2] != b"\0\0":
        raise FashionMnistSourceError(f"{path}: not an idx file (bad magic {raw[:4].hex()})")
    if raw[2] != 0x08:
        raise FashionMnistSourceError(f"{path}: idx type 0x{raw[2]:02x}, expected 0x08 (uint8)")
    if raw[3] != ndim:
        raise FashionMnistSourceError(f"{path}: {raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FashionMnistSourceError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    size = int(np.prod(shape, dtype=np.int64))
    if shape[0] > _MAX_ITEMS or size > _MAX_ITEMS * 28 * 28:
        raise FashionMnistSourceError(f"{path}: implausible idx shape {shape}")
    if len(raw) - header != size:
        raise FashionMnistSourceError(f"{path}: {len(raw) - header} data bytes, shape {shape} "
                                      f"needs {size} (truncated or padded)")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def idx_paths(source: Path) -> dict[str, tuple[Path, Path]]:
    """The (images, labels) files per split in ``source`` (``.gz`` or not); clear error if absent."""
    found: dict[str, tuple[Path, Path]] = {}
    missing: list[str] = []
    for split, stems in IDX_FILES.items():
        pair = []
        for stem in stems:
            hit = next((source / f"{stem}{ext}" for ext in (".gz", "")
                        if (source / f"{stem}{ext}").is_file()), None)
            if hit is None:
                missing.append(f"{stem}[.gz]")
            pair.append(hit)
        found[split] = (pair[0], pair[1])  # type: ignore[assignment]
    if missing:
        where = "does not exist" if not source.exists() else f"lacks {', '.join(missing)}"
        hint = (f"install the Debian package: apt-get install -y {APT_PACKAGE}"
                if source == DEBIAN_DIR else f"or install the Debian package {APT_PACKAGE} "
                f"and omit --source (it puts them in {DEBIAN_DIR})")
        raise FashionMnistSourceError(f"Fashion-MNIST idx files not found: {source} {where}; "
                                      f"{hint}; pass --source DIR holding the four idx files")
    return found


def load_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N x H x W uint8 images, N labels in 0..9) of one split, checked against each other."""
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if len(images) != len(labels):
        raise FashionMnistSourceError(f"{images_path.name} has {len(images)} images but "
                                      f"{labels_path.name} has {len(labels)} labels")
    if labels.size and int(labels.max()) >= len(FMNIST_CLASSES):
        raise FashionMnistSourceError(f"{labels_path}: label {int(labels.max())} outside 0..9")
    return images, labels


def setup_fashion_mnist(dest: Path | None = None, source: str | Path | None = None,
                        progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Write Fashion-MNIST as PNG files under ``dest`` (default ``<data>/fashion-mnist``) once.

    ``source``: a directory with the idx files (default: Debian's ``DEBIAN_DIR``). A second run
    does nothing unless ``force``. Returns counts, per-class counts, source and timing.
    """
    t0 = time.perf_counter()
    dest = Path(dest) if dest is not None else data_dir() / "fashion-mnist"
    src = Path(source).expanduser() if source is not None else DEBIAN_DIR
    marker = read_marker(dest)
    if marker is not None and not force:
        log.info("Fashion-MNIST already set up in %s (from %s); skipping", dest, marker.get("source"))
        return {**marker, "dest": str(dest), "skipped": True,
                "seconds": round(time.perf_counter() - t0, 3)}
    if dest.exists() and not force and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists without {MARKER} (not a finished set-up); "
                              "remove it or use --force")
    files = idx_paths(src)
    splits = {s: load_split(*files[s]) for s in SPLITS}  # all parsed before anything is written
    with staging(dest) as tmp:
        per_class = _write_pngs(splits, tmp, progress)
        marker = {
            "source": str(src), "format": "idx",
            "source_sha256": {p.name: sha256_file(p) for pair in files.values() for p in pair},
            "counts": {s: len(splits[s][1]) for s in SPLITS}, "per_class": per_class,
            "full": all(len(splits[s][1]) == FULL_COUNTS[s] for s in SPLITS),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        publish(tmp, dest, marker)
    log.info("Fashion-MNIST set up in %s: %s", dest, marker["counts"])
    return {**marker, "dest": str(dest), "skipped": False,
            "seconds": round(time.perf_counter() - t0, 3)}


def _write_pngs(splits: dict[str, tuple[np.ndarray, np.ndarray]], out: Path,
                progress: bool) -> dict[str, dict[str, int]]:
    """``out/<split>/<class>/NNNNN.png`` (numbered per class in file order); per-class counts."""
    per_class: dict[str, dict[str, int]] = {}
    bar = tqdm(total=sum(len(y) for _, y in splits.values()), desc="fashion-mnist", unit="img",
               disable=not progress)
    for split, (images, labels) in splits.items():
        counts = dict.fromkeys(FMNIST_CLASSES, 0)
        for cls in FMNIST_CLASSES:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
        for pixels, label in zip(images, labels, strict=True):
            cls = FMNIST_CLASSES[int(label)]
            Image.fromarray(pixels, "L").save(out / split / cls / f"{counts[cls]:05d}.png")
            counts[cls] += 1
            bar.update()
        per_class[split] = counts
    bar.close()
    return per_class
