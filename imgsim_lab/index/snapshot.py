"""Snapshots on disk: the faiss index file plus a JSON manifest with its sha256.

Both files are written to a temporary name and moved into place with ``os.replace``;
the index first, the manifest last, so a crash leaves at worst a manifest whose
checksum does not match (a corrupt snapshot, rebuilt from the store). Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss

from imgsim_lab import config

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


class SnapshotError(Exception):
    """The snapshot is missing, stale or corrupt (the message says which)."""


@dataclass
class Manifest:
    """What a snapshot claims about itself."""

    model: str
    dim: int
    mode: str
    factory: str
    watermark: int
    count: int
    trained_n: int
    store_url: str
    namespace: str
    config: dict[str, Any]
    sha256: str = ""
    size: int = 0
    format: int = FORMAT_VERSION

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            obj = json.loads(text)
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"malformed manifest: {exc}") from exc


def slug(url: str) -> str:
    """A directory name for a store URL: readable part plus a short hash (unique)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url).strip("_")[-60:]
    return f"{readable}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


def default_dir(store_url: str, namespace: str, model: str) -> Path:
    """``<data_dir>/index/<slug of store url>/<namespace>/<model>``."""
    return config.data_dir() / "index" / slug(store_url) / namespace / model


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def save(directory: Path, index: faiss.Index, manifest: Manifest) -> None:
    """Write index and manifest atomically into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / INDEX_FILE
    tmp = _tmp(target)
    try:
        faiss.write_index(index, str(tmp))
        manifest.sha256 = file_sha256(tmp)
        manifest.size = tmp.stat().st_size
        os.replace(tmp, target)
        mtarget = directory / MANIFEST_FILE
        mtmp = _tmp(mtarget)
        mtmp.write_text(json.dumps(manifest.__dict__, indent=1, sort_keys=True))
        os.replace(mtmp, mtarget)
    finally:
        for p in (tmp, _tmp(directory / MANIFEST_FILE)):
            try:
                p.unlink()
            except OSError:
                pass


def load(directory: Path) -> tuple[faiss.Index, Manifest]:
    """Read and verify a snapshot; raises :class:`SnapshotError` when missing or corrupt."""
    mpath, ipath = directory / MANIFEST_FILE, directory / INDEX_FILE
    if not mpath.exists() or not ipath.exists():
        raise SnapshotError(f"no snapshot in {directory}")
    manifest = Manifest.from_json(mpath.read_text())
    if manifest.format != FORMAT_VERSION:
        raise SnapshotError(f"snapshot format {manifest.format}, expected {FORMAT_VERSION}")
    size = ipath.stat().st_size
    if size != manifest.size:
        raise SnapshotError(f"index file has {size} bytes, manifest says {manifest.size} (truncated?)")
    digest = file_sha256(ipath)
    if digest != manifest.sha256:
        raise SnapshotError(f"index file checksum {digest[:12]}… != manifest {manifest.sha256[:12]}…")
    try:
        index = faiss.read_index(str(ipath))
    except RuntimeError as exc:
        raise SnapshotError(f"faiss cannot read {ipath}: {exc}") from exc
    return index, manifest
