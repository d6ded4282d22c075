"""The data of an experiment: which images, and a namespace bound to their identity.

An experiment's namespace names its data (``fashion-train-2000-s0-<fingerprint>``): the
fingerprint covers the dataset's resolved path and the content of every selected file,
so two folders with the same name, or a folder whose images changed, never share a
namespace and their vectors never mix (the old namespace is simply no longer used).
"""

from __future__ import annotations

import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgsim_lab.datasets import ImageItem, folder_items

log = logging.getLogger(__name__)

#: Hex digits of the dataset fingerprint kept in a namespace name.
FINGERPRINT_CHARS = 10


@dataclass(frozen=True)
class DatasetIdentity:
    """What a set of selected files is: where it comes from and what its files hold."""

    root: str            # "cifar10" or the resolved folder
    fingerprint: str     # hex digest over the sorted (source, content digest) pairs
    files: int
    unique_files: int    # distinct contents (byte-identical files are stored once)


def _file_digest(path: Path | None) -> str:
    h = hashlib.blake2b(digest_size=16)
    if path is None:
        return h.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dataset_identity(dataset: str, items: list[ImageItem], workers: int = 4) -> DatasetIdentity:
    """Fingerprint of ``items`` (their sources and contents) under ``dataset``'s resolved root."""
    root = dataset if dataset == "cifar10" else str(Path(dataset).expanduser().resolve())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        digests = list(pool.map(lambda it: _file_digest(it.path), items))
    h = hashlib.blake2b(digest_size=20)
    h.update(root.encode())
    for it, d in sorted(zip((it.source for it in items), digests, strict=True)):
        h.update(f"\0{it}\0{d}".encode())
    return DatasetIdentity(root, h.hexdigest(), len(items), len(set(digests)))


def data_namespace(dataset: str, size: int | None, seed: int, split: str = "train",
                   identity: DatasetIdentity | None = None) -> str:
    """A namespace naming the data in it, e.g. ``cifar10-train-5000-s0-1a2b3c4d5e``.

    With ``identity``, its fingerprint ends the name, so different data never shares it.
    """
    base = "cifar10" if dataset == "cifar10" else Path(dataset).name or "images"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-")[:24] or "images"
    name = f"{slug}-{split}-{'all' if size is None else size}-s{seed}"
    return f"{name}-{identity.fingerprint[:FINGERPRINT_CHARS]}" if identity else name


def ensure_cifar10(data_dir: Path, source: str | None, progress: bool = True) -> Path:
    """``<data_dir>/cifar10``, set up from ``source`` (default: the local archive) if needed."""
    from imgsim_lab.datasets import default_cifar10_source, is_complete, setup_cifar10

    root = data_dir / "cifar10"
    if not is_complete(root):
        src = source or default_cifar10_source()
        log.info("setting CIFAR-10 up in %s from %s", root, src or "a torchvision download")
        setup_cifar10(root, source=src, progress=progress)
    return root


def load_items(dataset: str, split: str, limit: int | None, seed: int, data_dir: Path,
               source: str | None = None, progress: bool = True) -> list[ImageItem]:
    """A seeded class-balanced subset of ``split`` of CIFAR-10 or of a ``train/ test/`` folder."""
    if dataset == "cifar10":
        from imgsim_lab.datasets import cifar10_items

        root = ensure_cifar10(data_dir, source, progress)
        return cifar10_items(split, root=root, limit=limit, seed=seed)
    items = folder_items(Path(dataset) / split, label_from_parent=True)
    return balanced_subset(items, limit, seed)


def balanced_subset(items: list[ImageItem], limit: int | None, seed: int) -> list[ImageItem]:
    """Round-robin over labels (each label's items in a seeded order) up to ``limit`` items."""
    if limit is None or limit >= len(items):
        return items
    rng = np.random.default_rng(seed)
    by_label: dict[str | None, list[ImageItem]] = {}
    for it in items:
        by_label.setdefault(it.label, []).append(it)
    queues = [[grp[i] for i in rng.permutation(len(grp))] for _, grp in sorted(
        by_label.items(), key=lambda kv: str(kv[0]))]
    chosen: list[ImageItem] = []
    depth = 0
    while len(chosen) < limit:
        for q in queues:
            if depth < len(q) and len(chosen) < limit:
                chosen.append(q[depth])
        depth += 1
    return sorted(chosen, key=lambda it: it.source)
