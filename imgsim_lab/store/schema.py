"""The declared schema of what the store keeps, shared by every backend.

Keys (``<ns>`` is the namespace; ``<id>`` is the image id zero-padded to 12 digits,
written ``{<first 10 digits>}<last 2 digits>`` — byte order is id order, and the
``{…}`` hash tag puts a block of 100 consecutive ids, all keys of each of their records,
in one Redis Cluster slot, so a block is read with one MGET and written with one script)::

    <ns>:seq                      last id handed out (the id watermark); ids only grow
    <ns>:count                    number of image records                  (RocksDB only)
    <ns>:epoch                    random token naming this incarnation of the namespace (new after a flush)
    <ns>:img:<id>                 the record: one JSON object of the fields of :class:`Record`
    <ns>:sha:<sha256>             -> id, claimed once (SET NX)
    <ns>:emb:<model>:<id>         embedding, raw little-endian float32, len == 4 * dim
    <ns>:model:<model>            model facts: dim, version (and count on RocksDB)
    <ns>:models                   set of model names                       (Redis only)
    <ns>:ids                      sorted set of image ids                  (Redis only)
    <ns>:eids:<model>             sorted set of ids with a <model> embedding (Redis only)
    <ns>:shas                     set of claimed sha256 values              (Redis only)
    <ns>:maint                    maintenance lock held by a repair          (Redis only)
    <ns>:writers                  sorted set of live writers, score = lease expiry (Redis only)

A record is one value, the same JSON bytes on every backend (:func:`record_json`): on
Kvrocks, where every hash field is its own RocksDB key, one value per record made bulk
writes faster (README, "Store figures"). Stores written before that hold records as
hashes on Redis/Kvrocks; they are still read (:func:`record_fields`). Model facts are
hashes on Redis/Kvrocks, JSON in RocksDB; Redis counts are the sizes of the id sets
(``ZCARD``: live and idempotent); RocksDB keys iterate in byte order, so the sets are
not needed there. What the store holds is enumerated through
these declared sets and the id range ``1..seq``, never through ``SCAN MATCH`` (Kvrocks
in cluster mode skips keys in such scans).

Record fields are declared once, by :class:`NewImage` (what a caller gives) and
:class:`Record` (that plus ``id`` and ``added``); every backend encodes them from the
dataclass fields, so adding an optional field means editing only those two classes.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from imgsim_lab.store.errors import CorruptDataError, DimensionMismatchError

NAME_RE = re.compile(r"^[A-Za-z0-9_.+\-]{1,64}$")  # "+": derived models BASE+NAME (issue 18)
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
ID_WIDTH = 12
#: Trailing id digits outside the hash tag: ids ``100·b … 100·b + 99`` share one tag (slot).
BLOCK_DIGITS = 2
BLOCK = 10**BLOCK_DIGITS
#: Length of the id suffix of a record or embedding key: ``{`` 10 digits ``}`` 2 digits.
ID_SUFFIX_LEN = ID_WIDTH + 2
VECTOR_DTYPE = np.dtype("<f4")
#: Most bytes of vectors in one chunk a store yields. A fresh array above glibc's mmap
#: threshold (32 MB at most) is mapped and page-faulted in anew for every chunk, which costs
#: more than reading it: 8,192 x 5 KB chunks read at 0.6-0.7x the speed of 4,096.
CHUNK_BYTES = 16 << 20


def chunk_rows(chunk_size: int, dim: int) -> int:
    """Rows per chunk when reading ``chunk_size`` vectors of ``dim`` floats at a time: at most
    :data:`CHUNK_BYTES` of vectors (and at least one row)."""
    return max(1, min(int(chunk_size), CHUNK_BYTES // (VECTOR_DTYPE.itemsize * int(dim))))


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
        """The id suffix ``{<10 digits>}<2 digits>``; the braces hold the block's hash tag."""
        digits = f"{int(image_id):0{ID_WIDTH}d}"
        return f"{{{digits[:-BLOCK_DIGITS]}}}{digits[-BLOCK_DIGITS:]}"

    @staticmethod
    def block(image_id: int) -> int:
        """Ids of one block share a hash tag, hence a cluster slot."""
        return int(image_id) // BLOCK

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
    def epoch(self) -> str:
        return f"{self.ns}:epoch"

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

    def emb_keys(self, model: str, ids: Sequence[int] | np.ndarray) -> list[bytes]:
        """:meth:`emb` of many ids, as bytes (one %-format each: ~5x faster than ``emb``)."""
        pattern = self.emb_prefix(model).encode() + b"{%0" + str(ID_WIDTH - BLOCK_DIGITS).encode() + \
            b"d}%0" + str(BLOCK_DIGITS).encode() + b"d"
        return [pattern % divmod(i, BLOCK) for i in np.asarray(ids, np.int64).tolist()]

    def model(self, model: str) -> str:
        return f"{self.ns}:model:{model}"

    @property
    def model_prefix(self) -> str:
        return f"{self.ns}:model:"

    def eids(self, model: str) -> str:
        return f"{self.ns}:eids:{model}"

    @property
    def shas(self) -> str:
        return f"{self.ns}:shas"

    @property
    def maint(self) -> str:
        return f"{self.ns}:maint"

    @property
    def writers(self) -> str:
        return f"{self.ns}:writers"

    @staticmethod
    def id_from_key(key: str | bytes) -> int:
        """The id in the trailing ``{<10 digits>}<2 digits>`` of a record or embedding key."""
        if isinstance(key, bytes):
            key = key.decode("ascii", "replace")
        tail = key[-ID_SUFFIX_LEN:]
        if (len(tail) != ID_SUFFIX_LEN or tail[0] != "{" or tail[-BLOCK_DIGITS - 1] != "}"
                or not (tail[1:-BLOCK_DIGITS - 1] + tail[-BLOCK_DIGITS:]).isdigit()):
            raise CorruptDataError(f"malformed key {key!r}")
        return int(tail[1:-BLOCK_DIGITS - 1] + tail[-BLOCK_DIGITS:])

    @classmethod
    def ids_from_keys(cls, keys: list[bytes]) -> np.ndarray:
        """:meth:`id_from_key` of many keys at once: vectorized when they have one length."""
        if not keys:
            return np.empty(0, np.int64)
        width = len(keys[0])
        buf = b"".join(keys)
        if width >= ID_SUFFIX_LEN and len(buf) == width * len(keys):
            tail = np.frombuffer(buf, np.uint8).reshape(len(keys), width)[:, width - ID_SUFFIX_LEN:]
            digits = np.concatenate([tail[:, 1:-BLOCK_DIGITS - 1], tail[:, -BLOCK_DIGITS:]], axis=1)
            if ((tail[:, 0] == ord("{")).all() and (tail[:, -BLOCK_DIGITS - 1] == ord("}")).all()
                    and ((digits >= ord("0")) & (digits <= ord("9"))).all()):
                scale = 10 ** np.arange(digits.shape[1] - 1, -1, -1, dtype=np.int64)
                return (digits.astype(np.int64) - ord("0")) @ scale
        return np.fromiter((cls.id_from_key(k) for k in keys), np.int64, len(keys))  # raises on a bad one


@dataclass(frozen=True)
class NewImage:
    """An image to add: its facts and, optionally, embeddings by model key.

    Every field but ``embeddings`` is stored in the record; an optional field (default
    ``None``) added here and to :class:`Record` is stored and read back by every backend.
    """

    sha256: str
    source: str
    width: int
    height: int
    label: str | None = None
    embeddings: Mapping[str, np.ndarray] = field(default_factory=dict)
    #: Absolute path of the file on the machine that added it (None: not a file, or unknown),
    #: so the app and the CLI can show and open it wherever it lives.
    path: str | None = None

    def __post_init__(self) -> None:
        if not SHA_RE.match(self.sha256 or ""):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"width and height must be positive, got {self.width}x{self.height}")

    def record_values(self) -> dict[str, str | int | float | None]:
        """The record fields this image gives (all of NewImage's fields but ``embeddings``)."""
        out = {}
        for name, spec in _IMAGE_SPECS:
            v = getattr(self, name)
            out[name] = v if type(v) is spec[0] else _coerce(name, v, spec)
        return out


@dataclass(frozen=True)
class Record:
    """One stored image's metadata: ``id``, the :class:`NewImage` fields, ``added``."""

    id: int
    sha256: str
    source: str
    width: int
    height: int
    label: str | None
    added: float
    path: str | None = None  # absolute path of the file when added (optional; see NewImage.path)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_fields(self) -> dict[str, str]:
        """The record as a Redis hash, as it was stored before records were one JSON value
        (every field that is not ``None``, as text): how the tests write such a store."""
        return {k: (repr(v) if isinstance(v, float) else str(v)) for k, v in self.as_dict().items()
                if v is not None}

    def to_json(self) -> bytes:
        """The stored value (:func:`record_json`)."""
        values = {k: v for k, v in self.as_dict().items() if k not in ("id", "added")}
        return record_json(self.id, values, self.added)

    @classmethod
    def from_fields(cls, raw: Mapping) -> Record:
        """Parse and validate fields read back (Redis hash or JSON); never trust them."""
        try:
            f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                 for k, v in raw.items()}
        except UnicodeDecodeError as exc:
            raise CorruptDataError(f"record fields are not UTF-8: {exc}") from None
        values = {}
        try:
            for name, (typ, optional) in RECORD_TYPES.items():
                v = f.get(name)
                if v is None or (optional and v == ""):
                    if not optional:
                        raise KeyError(name)
                    values[name] = None
                else:
                    values[name] = typ(v) if typ is not str else str(v)
            rec = cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"malformed record fields {sorted(f)}: {exc!r}") from exc
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


_JSON_STR = json.encoder.encode_basestring_ascii  # what json.dumps uses (C), quotes included


def record_json(image_id: int, values: Mapping, added: float) -> bytes:
    """A record as stored on every backend: ``{"id": …, <values>, "added": …}``, compact JSON
    (floats by repr, so they read back exactly). ``values`` are :meth:`NewImage.record_values`
    (field names are identifiers; values are str, int, float or None). The same bytes as
    ``json.dumps(…, separators=(",", ":"))`` (tested), at a quarter of its cost: this is on
    the bulk-write path (which formats ``added`` once per batch: :func:`record_json_ending`)."""
    return record_json_ending(image_id, values, added_ending(added))


def added_ending(added: float) -> str:
    """The end of a record's JSON, its ``added`` stamp: the same for a whole batch."""
    return f',"added":{_json_float(added)}}}'


def record_json_ending(image_id: int, values: Mapping, ending: str) -> bytes:
    """:func:`record_json` with its end (:func:`added_ending`) formatted already."""
    parts = ['{"id":', int.__repr__(int(image_id))]
    append = parts.append
    for name, v in values.items():
        append(_FIELD_HEADS.get(name) or f',"{name}":')
        append(_JSON_VALUE.get(type(v), _json_float)(v))
    append(ending)
    return "".join(parts).encode()


def _json_float(v: float) -> str:
    if not math.isfinite(v):
        raise ValueError(f"record value {v!r} is not finite")
    return float.__repr__(v)


_JSON_VALUE = {str: _JSON_STR, int: int.__repr__, type(None): lambda _: "null"}


def record_fields(value: bytes | Mapping | None) -> dict | None:
    """A stored record's fields, unparsed: from its JSON value, or from the hash fields of a
    record written before records were JSON on Redis/Kvrocks; ``{"_raw": …}`` when it is
    neither; ``None`` when absent."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {(a.decode("utf-8", "replace") if isinstance(a, bytes) else a):
                (b.decode("utf-8", "replace") if isinstance(b, bytes) else b) for a, b in value.items()}
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return {"_raw": value[:100]}
    return obj if isinstance(obj, dict) else {"_raw": value[:100]}


def _field_type(annotation: str) -> tuple[type, bool]:
    """``(parser, optional)`` of a record field's annotation (``int``, ``str | None`` …)."""
    parts = [p.strip() for p in str(annotation).split("|")]
    optional = "None" in parts
    base = next(p for p in parts if p != "None")
    return {"int": int, "float": float, "str": str}[base], optional


#: Record field name -> (type, optional), declared by the :class:`Record` dataclass.
RECORD_TYPES: dict[str, tuple[type, bool]] = {f.name: _field_type(f.type) for f in fields(Record)}
#: The record fields a NewImage gives (all its fields but ``embeddings``).
IMAGE_FIELDS = tuple(f.name for f in fields(NewImage) if f.name != "embeddings")
_IMAGE_SPECS = tuple((name, RECORD_TYPES[name]) for name in IMAGE_FIELDS)
#: ``,"<field>":`` of each record field, as record_json_ending writes them.
_FIELD_HEADS = {name: f',"{name}":' for name in IMAGE_FIELDS}


def _coerce(name: str, value: object, spec: tuple[type, bool]) -> str | int | float | None:
    typ, optional = spec
    if type(value) is typ:
        return value
    if value is None:
        if not optional:
            raise ValueError(f"record field {name!r} must not be None")
        return None
    return typ(value)


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
    nbytes = 4 * dim
    if values and None not in values and set(map(len, values)) == {nbytes}:  # the usual case: one C copy
        buf = bytearray().join(values)  # one copy, and the result is writable
        out = np.frombuffer(buf, dtype=VECTOR_DTYPE).reshape(len(values), dim)
        return np.asarray(ids, np.int64), out
    keep = np.fromiter((v is not None for v in values), bool, len(values))
    out = np.empty((int(keep.sum()), dim), np.float32)
    row = 0
    for image_id, v in zip(ids, values, strict=True):
        if v is not None:
            decode_into(out, row, v, dim, model, int(image_id))
            row += 1
    return np.asarray(ids, np.int64)[keep], out
