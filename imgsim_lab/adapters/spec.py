"""What a derived model is: its key, its bases (with their versions), kind, options, tensors.

A derived model computes its vectors from the stored vectors of one or more *base*
models, never from images: an adapter (a small trained head), database-mean centring,
PCA whitening or the concatenation of several bases. Its store key is ``BASE+NAME``
(``efficientnet_lite0+mlp``), the first base's key joined to the derived model's name.

Its ``version`` is ``<kind>-<hash>``, the hash covering the tensors, the options and the
bases' versions, so a retrained adapter is a new version and cannot be mixed with the old.
Everything here is pure and JSON/safetensors only: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Kinds of derived model and whether they are trained on labels.
KINDS = ("adapter", "center", "whiten", "concat")
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,32}$")
SEP = "+"


class DerivedModelError(ValueError):
    """A derived model cannot be built, found or applied (the message says why)."""


class StaleBaseError(DerivedModelError):
    """A derived model was built on a base model version the store no longer holds."""


def check_derived_name(name: str) -> str:
    """The derived model's own name: 1-32 characters of ``[A-Za-z0-9_.-]``."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DerivedModelError(f"invalid derived model name {name!r}: use 1-32 characters of "
                                "A-Z a-z 0-9 _ . -")
    return name


def derived_key(base: str, name: str) -> str:
    """``BASE+NAME``: the store key of derived model ``name`` on (first) base ``base``."""
    return f"{base}{SEP}{check_derived_name(name)}"


def is_derived_key(key: str) -> bool:
    """Does ``key`` name a derived model (``BASE+NAME``)?"""
    return SEP in key


def split_derived_key(key: str) -> tuple[str, str]:
    """``"a+b+c"`` -> ``("a+b", "c")``: (first base key, own name)."""
    if SEP not in key:
        raise DerivedModelError(f"{key!r} is not a derived model key (BASE+NAME)")
    base, name = key.rsplit(SEP, 1)
    return base, check_derived_name(name)


@dataclass(frozen=True)
class BaseRef:
    """One base model a derived model reads: its key, dim and the version it was built on."""

    key: str
    dim: int
    version: str


@dataclass
class DerivedSpec:
    """Everything needed to recompute a derived model's vectors, except its tensors.

    ``options`` holds the kind's settings (e.g. ``{"dim": 256, "loss": "cos_softmax"}``);
    ``trained_on`` says which records it was fitted on (namespace, split, count, digest);
    ``metrics`` holds training facts (seconds, epochs, validation scores).
    """

    key: str
    kind: str
    bases: list[BaseRef]
    dim: int
    options: dict[str, Any] = field(default_factory=dict)
    trained_on: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    created: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DerivedModelError(f"unknown derived model kind {self.kind!r}; one of {KINDS}")
        base, _ = split_derived_key(self.key)
        if not self.bases or self.bases[0].key != base:
            raise DerivedModelError(f"derived key {self.key!r} must start with its first base "
                                    f"({self.bases[0].key if self.bases else 'none'})")
        self.bases = [b if isinstance(b, BaseRef) else BaseRef(**b) for b in self.bases]

    @property
    def name(self) -> str:
        return split_derived_key(self.key)[1]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> DerivedSpec:
        try:
            obj = json.loads(text)
            obj["bases"] = [BaseRef(str(b["key"]), int(b["dim"]), str(b["version"]))
                            for b in obj["bases"]]
            return cls(**obj)
        except (ValueError, KeyError, TypeError) as exc:
            raise DerivedModelError(f"malformed derived model spec: {exc}") from exc


def content_version(kind: str, tensors: dict[str, np.ndarray], options: dict[str, Any],
                    bases: list[BaseRef]) -> str:
    """``<kind>-<12 hex>``: a hash of the tensors' bytes, the options and the base versions."""
    h = hashlib.sha256()
    h.update(json.dumps({"kind": kind, "options": options,
                         "bases": [asdict(b) for b in bases]}, sort_keys=True).encode())
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], np.float32)
        h.update(name.encode())
        h.update(str(arr.shape).encode())
        h.update(arr.tobytes())
    return f"{kind}-{h.hexdigest()[:12]}"
