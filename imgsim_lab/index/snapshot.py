"""Snapshots on disk: the faiss index file plus a JSON manifest with its sha256.

Both files are written to a temporary name and moved into place with ``os.replace``;
the index first, the manifest last, so a crash leaves at worst a manifest whose
checksum does not match (a corrupt snapshot, rebuilt from the store). Never pickle.

A snapshot is bound to the namespace's identity: the manifest records the store's
epoch (:meth:`Store.epoch`, a new token after a flush) and the digests of a sample of
the indexed vectors, both checked against the store when the snapshot is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from imgsim_lab import config
from imgsim_lab.store import Store

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2
#: Indexed vectors whose digests the manifest records (checked against the store on load).
SAMPLE_SIZE = 32


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
    epoch: str | None = None            # the store's epoch when the index was built
    sample: list[list] = field(default_factory=list)  # [[id, sha256 of its stored vector], ...]

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise TypeError("not a JSON object")
            if obj.get("format") != FORMAT_VERSION:
                raise SnapshotError(f"snapshot format {obj.get('format')}, expected {FORMAT_VERSION}")
            return cls(**{k: obj[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError) as exc:
            raise SnapshotError(f"malformed manifest: {exc}") from exc


def store_dirname(url: str) -> str:
    """A directory name for a store URL: readable part plus a short hash (unique)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", url).strip("_")[-60:]
    return f"{readable}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


def store_identity(store: Store) -> str:
    """What names a store on this machine: its resolved path (RocksDB) or its redacted URL."""
    path = getattr(store, "path", None)
    if store.backend == "rocksdb" and path:
        return f"rocksdb:{Path(path).resolve()}"
    return store.url


def namespace_dir(store_url: str, namespace: str) -> Path:
    """``<data_dir>/index/<slug of store url>/<namespace>``: every model's snapshot of it."""
    return config.data_dir() / "index" / store_dirname(store_url) / namespace


def default_dir(store_url: str, namespace: str, model: str) -> Path:
    """``<data_dir>/index/<slug of store url>/<namespace>/<model>``."""
    return namespace_dir(store_url, namespace) / model


def remove_namespace(store: Store) -> bool:
    """Delete the default snapshots of ``store``'s namespace (after a flush); True if any existed."""
    directory = namespace_dir(store_identity(store), store.namespace)
    if not directory.exists():
        return False
    shutil.rmtree(directory, ignore_errors=True)
    log.info("removed the index snapshots of namespace %s in %s", store.namespace, directory)
    return True


def vector_digest(vec: np.ndarray) -> str:
    """sha256 of a vector's little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(vec, "<f4").tobytes()).hexdigest()


def sample_digests(store: Store, model: str, ids: np.ndarray, size: int = SAMPLE_SIZE) -> list[list]:
    """``[[id, digest], ...]`` for up to ``size`` ids spread evenly over the sorted ``ids``."""
    if not len(ids):
        return []
    pick = np.unique(np.asarray(ids, np.int64)[np.linspace(0, len(ids) - 1, min(size, len(ids))).astype(int)])
    found, vecs = store.get_embeddings(model, pick)
    return [[int(i), vector_digest(v)] for i, v in zip(found.tolist(), vecs, strict=True)]


def check_sample(store: Store, model: str, sample: list[list]) -> str | None:
    """``None`` when every sampled id still holds the vector it held; else what differs.

    Ids deleted since are not a mismatch (catch-up drops them); another vector under
    the same id is (the namespace was flushed and refilled, or the snapshot is foreign).
    """
    if not sample:
        return None
    try:
        ids = np.array([int(i) for i, _ in sample], np.int64)
        want = {int(i): str(d) for i, d in sample}
    except (TypeError, ValueError) as exc:
        return f"malformed vector sample: {exc}"
    found, vecs = store.get_embeddings(model, ids)
    changed = [int(i) for i, v in zip(found.tolist(), vecs, strict=True) if vector_digest(v) != want[i]]
    if changed:
        return (f"{len(changed)} of {len(sample)} sampled vectors differ from the store's "
                f"(ids {changed[:5]}{'…' if len(changed) > 5 else ''})")
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


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
