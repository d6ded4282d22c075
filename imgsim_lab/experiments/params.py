"""Parameter dataclasses from YAML or a notebook's parameters cell, with typos refused."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

log = logging.getLogger(__name__)


def checked_params(cls: type, values: dict[str, Any], what: str) -> Any:
    """``cls(**values)``, rejecting unknown keys (typos in YAML must not pass silently)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {what} parameters {unknown}; known: {sorted(names)}")
    return cls(**values)


def params_from_namespace(cls: type, namespace: dict[str, Any]) -> Any:
    """``cls`` (a params dataclass) built from the variables of a notebook's parameters cell."""
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in namespace]
    if missing:
        log.info("parameters not set in the notebook, using defaults: %s", missing)
    return cls(**{n: namespace[n] for n in names if n in namespace})
