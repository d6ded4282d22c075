"""The one store interface; backends implement the underscored primitives."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from imgsim_lab.store.errors import (
    ModelMismatchError,
    ReadOnlyStoreError,
    UnknownModelError,
)
from imgsim_lab.store.schema import (
    AddResult,
    Keys,
    ModelInfo,
    NewImage,
    Record,
    check_name,
    encode_vector,
)

log = logging.getLogger(__name__)

#: Records per atomic write (one Lua call / one WriteBatch).
WRITE_BATCH = 256
#: Vectors per bulk read (one MGET / one multi-get).
READ_BATCH = 1000


def check_finite(encoded: Sequence[EncodedImage]) -> None:
    """Reject NaN or infinity in any vector, checked on all of them at once."""
    blob = b"".join(data for item in encoded for _, data in item.vectors)
    if blob and not np.isfinite(np.frombuffer(blob, dtype=np.float32)).all():
        for item in encoded:
            for model, data in item.vectors:
                if not np.isfinite(np.frombuffer(data, dtype=np.float32)).all():
                    raise ValueError(f"embedding of {item.source!r} for model {model!r} "
                                     "contains NaN or infinity")


@dataclass(frozen=True)
class EncodedImage:
    """A validated :class:`NewImage` with its vectors already encoded to bytes."""

    sha256: str
    source: str
    width: int
    height: int
    label: str | None
    vectors: tuple[tuple[str, bytes], ...]
    path: str | None = None


class Store(ABC):
    """Images, their hashes and per-model embeddings under one namespace.

    Open one with :func:`imgsim_lab.store.open_store`. A store is a context manager.
    """

    backend: str = "?"

    def __init__(self, url: str, namespace: str, read_only: bool = False) -> None:
        self.url = url  # already redacted by the caller
        self.namespace = check_name("namespace", namespace)
        self.keys = Keys(namespace)
        self.read_only = read_only
        self._dims: dict[str, int] = {}

    # ----------------------------------------------------------------- lifecycle
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url} ns={self.namespace}{' ro' if self.read_only else ''}>"

    @abstractmethod
    def close(self) -> None: ...

    def refresh(self) -> None:
        """See writes made by other processes (only the RocksDB secondary needs it)."""

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"store {self.url} is open read-only")

    # ------------------------------------------------------------------- models
    def register_model(self, name: str, dim: int, version: str) -> ModelInfo:
        """Record a model's dimension and version once; later calls must agree."""
        check_name("model", name)
        if int(dim) <= 0:
            raise ValueError(f"model {name!r}: dimension must be positive, got {dim}")
        existing = self.model_info().get(name)
        if existing is None:
            self._check_writable()
            existing = self._register_model(name, int(dim), str(version))
        if existing.dim != int(dim) or existing.version != str(version):
            raise ModelMismatchError(
                f"model {name!r} is stored with dim={existing.dim} version={existing.version!r}, "
                f"not dim={dim} version={version!r}: use another namespace or flush this one")
        self._dims[name] = existing.dim
        return existing

    def model_dim(self, name: str) -> int:
        """The recorded dimension of ``name``'s embeddings."""
        if name not in self._dims:
            info = self.model_info().get(name)
            if info is None:
                raise UnknownModelError(f"no model {name!r} in namespace {self.namespace!r} of {self.url}")
            self._dims[name] = info.dim
        return self._dims[name]

    @abstractmethod
    def _register_model(self, name: str, dim: int, version: str) -> ModelInfo: ...

    @abstractmethod
    def model_info(self) -> dict[str, ModelInfo]:
        """Every model of the namespace with its dim, version and embedding count."""

    # ------------------------------------------------------------------- writes
    def add_images(self, items: Iterable[NewImage]) -> list[AddResult]:
        """Add images atomically, one record per sha256; fill in missing embeddings.

        An image whose sha256 is already claimed keeps its record and id
        (``created=False``); embeddings it lacks are added. Each record with its hash
        claim and embeddings is written as a unit.
        """
        self._check_writable()
        encoded = [self._encode(item) for item in items]
        check_finite(encoded)
        batches = [encoded[s : s + WRITE_BATCH] for s in range(0, len(encoded), WRITE_BATCH)]
        return self._add_batches(batches)

    def _encode(self, item: NewImage) -> EncodedImage:
        vectors = []
        for model, vec in item.embeddings.items():
            dim = self.model_dim(model)
            if type(vec) is np.ndarray and vec.dtype == np.float32 and vec.shape == (dim,):
                vectors.append((model, vec.tobytes()))  # fast path; finiteness checked per batch
            else:
                vectors.append((model, encode_vector(vec, dim, model)))
        return EncodedImage(item.sha256, str(item.source), int(item.width), int(item.height),
                            None if item.label is None else str(item.label), tuple(vectors),
                            None if item.path is None else str(item.path))

    def _add_batches(self, batches: list[list[EncodedImage]]) -> list[AddResult]:
        """Write batches in order; backends may overlap them (the Redis one pipelines)."""
        return [r for batch in batches for r in self._add_encoded(batch)]

    @abstractmethod
    def _add_encoded(self, batch: Sequence[EncodedImage]) -> list[AddResult]: ...

    def delete(self, ids: Iterable[int]) -> int:
        """Delete images (record, hash claim, all embeddings); returns how many existed."""
        self._check_writable()
        ids = [int(i) for i in ids]
        return sum(self._delete(ids[s : s + WRITE_BATCH]) for s in range(0, len(ids), WRITE_BATCH))

    @abstractmethod
    def _delete(self, ids: Sequence[int]) -> int: ...

    @abstractmethod
    def flush(self) -> int:
        """Remove every key of this namespace (only); returns the number removed."""

    # -------------------------------------------------------------------- reads
    @abstractmethod
    def count(self) -> int:
        """Number of image records (our own counter, not DBSIZE)."""

    @abstractmethod
    def last_id(self) -> int:
        """The id watermark: every id ever handed out is <= this."""

    @abstractmethod
    def get_records(self, ids: Sequence[int]) -> list[Record | None]:
        """Records by id, ``None`` where absent."""

    @abstractmethod
    def ids_for_hashes(self, shas: Sequence[str]) -> list[int | None]:
        """The id that claimed each sha256, ``None`` where unclaimed."""

    def get_embeddings(self, model: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``ids`` for ``model`` in one batch: ``(found_ids, vectors)``.

        Ids without an embedding are left out; order follows ``ids``.
        """
        dim = self.model_dim(model)
        ids = np.asarray(ids, dtype=np.int64).ravel()
        found_parts, vec_parts = [], []
        for s in range(0, len(ids), READ_BATCH):
            f, v = self._get_embeddings(model, dim, ids[s : s + READ_BATCH])
            found_parts.append(f)
            vec_parts.append(v)
        if not found_parts:
            return np.empty(0, np.int64), np.empty((0, dim), np.float32)
        return np.concatenate(found_parts), np.concatenate(vec_parts)

    @abstractmethod
    def _get_embeddings(self, model: str, dim: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def has_embeddings(self, model: str, ids: Sequence[int]) -> np.ndarray:
        """A bool per id: does it have an embedding of ``model``?"""

    @abstractmethod
    def iter_embeddings(self, model: str, after_id: int = 0,
                        chunk_size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All ``(ids, vectors)`` of ``model`` with id > ``after_id``, in id order, in chunks."""

    @abstractmethod
    def iter_records(self, after_id: int = 0, chunk_size: int = 1000) -> Iterator[list[Record]]:
        """All records with id > ``after_id`` in id order, in chunks."""

    def all_ids(self, after_id: int = 0) -> np.ndarray:
        """Every image id > ``after_id``, ascending."""
        parts = [np.array([r.id for r in chunk], np.int64) for chunk in self.iter_records(after_id)]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    # ------------------------------------------------- raw access (for `imgsim check`)
    @abstractmethod
    def raw_scan(self, prefix: str) -> Iterator[str]:
        """Every key of this namespace starting with ``prefix`` (a full key prefix)."""

    @abstractmethod
    def raw_get(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of plain string keys (hash claims, embeddings, counters)."""

    @abstractmethod
    def raw_record(self, image_id: int) -> dict | None:
        """The record's stored fields, unparsed (``None`` when absent)."""

    @abstractmethod
    def raw_delete(self, keys: Sequence[str]) -> int:
        """Delete keys; returns how many existed."""

    @abstractmethod
    def raw_set(self, key: str, value: bytes | str) -> None:
        """Set a plain string key."""

    @abstractmethod
    def rebuild_derived(self, record_ids: Sequence[int], embedding_ids: dict[str, Sequence[int]]) -> None:
        """Rewrite what is derived from the records: counters, id watermark, id sets."""

    def info(self) -> dict:
        """A JSON-able summary: images, models (dim, count, version), backend, url, namespace."""
        models = self.model_info()
        return {
            "backend": self.backend,
            "url": self.url,
            "namespace": self.namespace,
            "images": self.count(),
            "last_id": self.last_id(),
            "models": {m.name: {"dim": m.dim, "count": m.count, "version": m.version}
                       for m in models.values()},
        }
