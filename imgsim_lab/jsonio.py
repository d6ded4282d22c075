"""JSON in and out: one way to serialize results (numpy scalars, paths) and write them atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def dumps(obj: Any) -> str:
    """Indented, key-sorted JSON text of ``obj``."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_default)


def write_json(path: str | os.PathLike[str], obj: Any) -> str:
    """Write ``obj`` to ``path`` atomically (a partial file never looks finished); returns the text."""
    text = dumps(obj)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(p)
    return text
