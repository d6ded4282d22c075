"""Options shared by subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_store_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kv", metavar="URL", default=None,
                        help="store URL: rocksdb:PATH, redis://host:6666/0, rediss://..., "
                             "redis+cluster://h1:6666,h2:6666 "
                             "(default: $IMGSIM_KV_URL, else rocksdb:data/kv)")
    parser.add_argument("--namespace", default=None,
                        help="key namespace (default: $IMGSIM_NAMESPACE, else imgsim)")


def write_json(obj: Any, path: str | None) -> str:
    """Serialize ``obj``; write it to ``path`` when given. Returns the JSON text."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str)
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n", encoding="utf-8")
    return text


def add_backend_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["onnxruntime", "torch"], default=None,
                        help="what runs the CNNs (default onnxruntime; same vectors either way)")


def load_model(name: str, size: int | None = None, backend: str | None = None):
    """``get_model(name, size)``, on ``backend`` when given and the model has backends (CNNs)."""
    from imgsim_lab.models import get_model

    if backend:
        try:
            return get_model(name, size=size, backend=backend)
        except TypeError:  # a baseline: numpy only
            pass
    return get_model(name, size=size)
