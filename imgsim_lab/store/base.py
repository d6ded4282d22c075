"""The one store interface; backends implement the underscored primitives."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from imgsim_lab.store.config import StoreConfig
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

#: Records per atomic write (one MULTI / one WriteBatch).
WRITE_BATCH = StoreConfig().write_batch
#: Vectors per bulk read (one MGET / one multi-get).
READ_BATCH = StoreConfig().read_batch


_F32 = np.dtype(np.float32)


def check_finite(encoded: Sequence[EncodedImage]) -> None:
    """Reject NaN or infinity in any vector: one float64 sum over the batch's vectors (NaN and
    infinity propagate into it; float32 values cannot overflow a float64 sum of any practical
    length), then, only if it is not finite, one per vector to name the culprit."""
    step = 256  # a cache-sized join at a time
    if all(math.isfinite(np.frombuffer(b"".join([data for item in encoded[s : s + step]
                                                  for _, data in item.vectors]),
                                       dtype=np.float32).sum(dtype=np.float64))
           for s in range(0, len(encoded), step)):
        return
    for item in encoded:
        for model, data in item.vectors:
            if not math.isfinite(np.frombuffer(data, dtype=np.float32).sum(dtype=np.float64)):
                raise ValueError(f"embedding of {item.source!r} for model {model!r} "
                                 "contains NaN or infinity")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (it runs again after): a bulk write allocates a
    few objects per image, and the collections they trigger cost about a third of the
    client's time (``imgsim bench store``). Left off if the caller had it off."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@dataclass(slots=True)
class EncodedImage:
    """A validated :class:`NewImage`: its record values and its vectors as raw float32 bytes
    (``bytes``, or a byte view of the caller's array, valid while the write runs)."""

    sha256: str
    values: dict  # record field -> value, from NewImage.record_values()
    vectors: tuple[tuple[str, bytes | memoryview], ...]

    @property
    def source(self) -> str:
        return str(self.values.get("source"))

    def record(self, image_id: int, added: float) -> Record:
        return Record(id=image_id, added=added, **self.values)


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

    def forget_model(self, name: str) -> None:
        """Remove a model's facts and id set (its vectors are the caller's to delete first)."""
        check_name("model", name)
        self._check_writable()
        self._forget_model(name)
        self._dims.pop(name, None)

    @abstractmethod
    def _forget_model(self, name: str) -> None: ...

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
        self.epoch()  # the first write of a namespace gives it its identity
        with gc_paused():
            encoded = [self._encode(item) for item in items]
            check_finite(encoded)
            batches = [encoded[s : s + WRITE_BATCH] for s in range(0, len(encoded), WRITE_BATCH)]
            return self._add_batches(batches)

    def _encode(self, item: NewImage) -> EncodedImage:
        vectors = []
        for model, vec in item.embeddings.items():
            dim = self.model_dim(model)
            if (type(vec) is np.ndarray and vec.dtype == _F32 and vec.shape == (dim,)
                    and vec.flags.c_contiguous):
                # fast path: a view of the caller's vector, copied only into the wire buffer
                # (no copy per image); finiteness is checked per batch
                vectors.append((model, vec.data.cast("B")))
            else:
                vectors.append((model, encode_vector(vec, dim, model)))
        return EncodedImage(item.sha256, item.record_values(), tuple(vectors))

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
    def epoch(self) -> str | None:
        """The namespace's identity: a random token set by its first writer, gone after a flush.

        Index snapshots record it: another token means the namespace was flushed and
        written again since. A writer creates it when missing; read-only and none yet: ``None``.
        """
        key = self.keys.epoch
        value = self.raw_get([key])[0]
        if value is None and not self.read_only:
            self.raw_set(key, secrets.token_hex(16))
            value = self.raw_get([key])[0]  # a concurrent first writer may have won: read back
        return None if value is None else bytes(value).decode("ascii", "replace")

    @abstractmethod
    def count(self) -> int:
        """Number of image records (our own counter, not DBSIZE)."""

    @abstractmethod
    def last_id(self) -> int:
        """The id watermark: every id ever handed out is <= this."""

    def embedding_count(self, model: str, upto: int) -> int:
        """Vectors of ``model`` stored under ids ``<= upto`` (the index compares this with what it holds).

        This default counts them all: right where the watermark moves in the same atomic
        write as the records (RocksDB). A server store counts by id, since other ids past
        the watermark may be listed while a lower reservation is still in flight.
        """
        info = self.model_info().get(model)
        return 0 if info is None else info.count

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
        if len(found_parts) == 1:  # one batch (a re-rank): no second copy of the vectors
            return found_parts[0], vec_parts[0]
        return np.concatenate(found_parts), np.concatenate(vec_parts)

    @abstractmethod
    def _get_embeddings(self, model: str, dim: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def has_embeddings(self, model: str, ids: Sequence[int]) -> np.ndarray:
        """A bool per id: does it have an embedding of ``model``?"""

    @abstractmethod
    def iter_embeddings(self, model: str, after_id: int = 0,
                        chunk_size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All ``(ids, vectors)`` of ``model`` with id > ``after_id``, in id order, in chunks of at
        most ``chunk_size`` (and of at most :data:`~.schema.CHUNK_BYTES` of vectors)."""

    @abstractmethod
    def iter_records(self, after_id: int = 0, chunk_size: int = 1000) -> Iterator[list[Record]]:
        """All records with id > ``after_id`` in id order, in chunks."""

    def all_ids(self, after_id: int = 0) -> np.ndarray:
        """Every image id > ``after_id``, ascending."""
        parts = [np.array([r.id for r in chunk], np.int64) for chunk in self.iter_records(after_id)]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    # ------------------------------------------ inventory (for `imgsim check`, `--repair`)
    # What the store holds, enumerated through what the schema declares (id range 1..seq,
    # the id sets, the claim set), never through a SCAN MATCH. Connection errors raise
    # StoreConnectionError: they are never mistaken for damaged data.
    @abstractmethod
    def inventory_records(self) -> Iterator[list[tuple[int, dict | None]]]:
        """``(id, raw fields)`` of every existing record key, in chunks (fields unparsed)."""

    @abstractmethod
    def inventory_embeddings(self, model: str) -> Iterator[list[tuple[int, int]]]:
        """``(id, byte length)`` of every existing embedding of ``model``, in chunks."""

    @abstractmethod
    def inventory_claims(self) -> Iterator[list[tuple[str, bytes | None]]]:
        """``(sha256, raw value)`` of every hash claim the store lists, in chunks."""

    @abstractmethod
    @abstractmethod
    def namespaces(self) -> dict[str, int]:
        """Every namespace of this database (``<ns>:seq`` exists) with its image count.

        One full keyspace scan: a hint for people (``imgsim info``), never used to repair."""

    @abstractmethod
    def scan_keys(self) -> Iterator[str]:
        """Every key of this namespace a full keyspace scan returns (no ``MATCH``: it can
        skip keys on Kvrocks clusters). Only for finding strays: absence here proves nothing."""

    def derived_problems(self, record_ids: Sequence[int],
                         embedding_ids: dict[str, Sequence[int]]) -> list[str]:
        """How counters, watermark and id sets disagree with these records and embeddings."""
        out = []
        if self.count() != len(record_ids):
            out.append(f"count {self.count()} != {len(record_ids)} records")
        top = max([0, *record_ids, *(i for ids in embedding_ids.values() for i in ids)])
        if self.last_id() < top:
            out.append(f"watermark {self.last_id()} is behind id {top}")
        infos = self.model_info()
        for name, ids in embedding_ids.items():
            if name in infos and infos[name].count != len(ids):
                out.append(f"model {name}: count {infos[name].count} != {len(ids)} embeddings")
        return out

    @abstractmethod
    def rebuild_derived(self, record_ids: Sequence[int], embedding_ids: dict[str, Sequence[int]],
                        claimed: Sequence[str] | None = None) -> None:
        """Rewrite what is derived from the records: counters, id watermark, id sets
        (and the set of claims, ``claimed``, where the backend keeps one)."""

    def server_cpu_seconds(self) -> float | None:
        """CPU seconds the server(s) have used so far (``None``: in-process, no server)."""
        return None

    def maintenance(self) -> contextlib.AbstractContextManager:
        """Hold the namespace's maintenance lock (writers and repair exclude each other)."""
        return contextlib.nullcontext()

    # ------------------------------------------------- raw access (for `imgsim check`)

    @abstractmethod
    def raw_get(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of plain string keys (hash claims, embeddings, counters)."""

    @abstractmethod
    def raw_delete(self, keys: Sequence[str]) -> int:
        """Delete keys; returns how many existed."""

    @abstractmethod
    def raw_set(self, key: str, value: bytes | str) -> None:
        """Set a plain string key."""

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
