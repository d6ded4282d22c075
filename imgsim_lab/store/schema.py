"""The declared schema of what the store keeps, shared by every backend.

Keys (``<ns>`` is the namespace, ``<id12>`` the image id zero-padded to 12 digits so
that byte order is id order; the ``{<id12>}`` hash tag keeps one record's keys in
one Redis Cluster slot)::

    <ns>:seq                      last id handed out (the id watermark)
    <ns>:count                    number of image records (kept by us: Kvrocks' DBSIZE is not live)
    <ns>:img:{<id12>}             the record: id, sha256, source, width, height, label, added
    <ns>:sha:<sha256>             -> id, claimed once (SETNX semantics)
    <ns>:emb:<model>:{<id12>}     embedding, raw little-endian float32, len == 4 * dim
    <ns>:model:<model>            model facts: dim, version, count
    <ns>:models                   set of model names              (Redis backend only)
    <ns>:ids                      sorted set of image ids         (Redis backend only)
    <ns>:eids:<model>             sorted set of ids with an embedding of <model> (Redis only)

On Redis/Kvrocks a record and model facts are hashes; in RocksDB they are JSON objects
and the sorted sets are not needed because keys iterate in byte order.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from imgsim_lab.store.errors import CorruptDataError, DimensionMismatchError

NAME_RE = re.compile(r"^[A-Za-z0-9_.+\-]{1,64}$")  # "+": derived models BASE+NAME (issue 18)
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
ID_WIDTH = 12
VECTOR_DTYPE = np.dtype("<f4")
RECORD_FIELDS = ("id", "sha256", "source", "width", "height", "label", "added")


def check_name(kind: str, name: str) -> str:
    """Namespaces and model keys: 1-64 characters of ``[A-Za-z0-9_.+-]``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"invalid {kind} {name!r}: use 1-64 characters of A-Z a-z 0-9 _ . + -")
    return name


@dataclass(frozen=True)
class Keys:
    """Builds every key of one namespace."""

    ns: str

    def __post_init__(self) -> None:
        check_name("namespace", self.ns)

    @staticmethod
    def tag(image_id: int) -> str:
        return f"{{{image_id:0{ID_WIDTH}d}}}"

    @property
    def prefix(self) -> str:
        return f"{self.ns}:"

    @property
    def seq(self) -> str:
        return f"{self.ns}:seq"

    @property
    def count(self) -> str:
        return f"{self.ns}:count"

    @property
    def models(self) -> str:
        return f"{self.ns}:models"

    @property
    def ids(self) -> str:
        return f"{self.ns}:ids"

    @property
    def img_prefix(self) -> str:
        return f"{self.ns}:img:"

    def img(self, image_id: int) -> str:
        return f"{self.ns}:img:{self.tag(image_id)}"

    def sha(self, sha256: str) -> str:
        return f"{self.ns}:sha:{sha256}"

    def emb_prefix(self, model: str) -> str:
        return f"{self.ns}:emb:{model}:"

    def emb(self, model: str, image_id: int) -> str:
        return f"{self.ns}:emb:{model}:{self.tag(image_id)}"

    def model(self, model: str) -> str:
        return f"{self.ns}:model:{model}"

    @property
    def model_prefix(self) -> str:
        return f"{self.ns}:model:"

    def eids(self, model: str) -> str:
        return f"{self.ns}:eids:{model}"

    @staticmethod
    def id_from_key(key: str | bytes) -> int:
        """The id in the trailing ``{<id12>}`` tag of a record or embedding key."""
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        try:
            return int(key[key.rindex("{") + 1 : key.rindex("}")])
        except ValueError as exc:
            raise CorruptDataError(f"malformed key {key!r}") from exc


@dataclass(frozen=True)
class NewImage:
    """An image to add: its facts and, optionally, embeddings by model key."""

    sha256: str
    source: str
    width: int
    height: int
    label: str | None = None
    embeddings: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not SHA_RE.match(self.sha256 or ""):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"width and height must be positive, got {self.width}x{self.height}")


@dataclass(frozen=True)
class Record:
    """One stored image's metadata."""

    id: int
    sha256: str
    source: str
    width: int
    height: int
    label: str | None
    added: float

    def as_dict(self) -> dict:
        return {"id": self.id, "sha256": self.sha256, "source": self.source, "width": self.width,
                "height": self.height, "label": self.label, "added": self.added}

    def to_fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.as_dict().items() if v is not None}

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_fields(cls, fields: Mapping) -> Record:
        """Parse and validate fields read back (Redis hash or JSON); never trust them."""
        f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in fields.items()}
        try:
            rec = cls(
                id=int(f["id"]),
                sha256=str(f["sha256"]),
                source=str(f["source"]),
                width=int(f["width"]),
                height=int(f["height"]),
                label=None if f.get("label") in (None, "") else str(f["label"]),
                added=float(f["added"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"malformed record fields {sorted(f)}: {exc}") from exc
        if (not SHA_RE.match(rec.sha256) or rec.id <= 0 or rec.width <= 0 or rec.height <= 0
                or not math.isfinite(rec.added)):
            raise CorruptDataError(f"record {rec.id} has invalid field values")
        return rec

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"record is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise CorruptDataError("record is not a JSON object")
        return cls.from_fields(obj)


@dataclass(frozen=True)
class ModelInfo:
    """What the store knows of one model's embeddings."""

    name: str
    dim: int
    version: str
    count: int


@dataclass(frozen=True)
class AddResult:
    """Outcome of adding one image: its id, whether the record is new, models embedded now."""

    id: int
    created: bool
    embedded: tuple[str, ...] = ()


def now() -> float:
    return round(time.time(), 3)


def encode_vector(vec: np.ndarray, dim: int, model: str) -> bytes:
    """Raw little-endian float32 bytes of one vector, after checking its dimension."""
    arr = np.asarray(vec)
    if arr.ndim != 1 or arr.shape[0] != dim:
        raise DimensionMismatchError(
            f"model {model!r} has dimension {dim}, got a vector of shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"vector for model {model!r} contains NaN or infinity")
    return arr.astype(VECTOR_DTYPE, copy=False).tobytes()


def decode_vector(data: bytes, dim: int, model: str, image_id: int | None = None) -> np.ndarray:
    """Parse raw float32 bytes; the length must be exactly 4 * dim."""
    if data is None or len(data) != 4 * dim:
        n = None if data is None else len(data)
        raise CorruptDataError(
            f"embedding of image {image_id} for model {model!r} has {n} bytes, expected {4 * dim}")
    return np.frombuffer(data, dtype=VECTOR_DTYPE)


def decode_into(out: np.ndarray, row: int, data: bytes, dim: int, model: str, image_id: int) -> None:
    """Decode one vector straight into ``out[row]`` (no intermediate array)."""
    if data is None or len(data) != 4 * dim:
        decode_vector(data, dim, model, image_id)  # raises with the message
    out[row] = np.frombuffer(data, dtype=VECTOR_DTYPE)


def decode_many(ids: np.ndarray, values: list, dim: int, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Vectors read for ``ids`` (``None`` where absent): ``(found_ids, vectors)`` in input order."""
    keep = np.fromiter((v is not None for v in values), bool, len(values))
    out = np.empty((int(keep.sum()), dim), np.float32)
    row = 0
    for image_id, v in zip(ids, values, strict=True):
        if v is not None:
            decode_into(out, row, v, dim, model, int(image_id))
            row += 1
    return np.asarray(ids, np.int64)[keep], out
