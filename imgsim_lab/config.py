"""Defaults in one place, each overridable by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variables read by :func:`kv_url`, :func:`namespace` and :func:`data_dir`.
ENV_KV_URL = "IMGSIM_KV_URL"
ENV_NAMESPACE = "IMGSIM_NAMESPACE"
ENV_DATA_DIR = "IMGSIM_DATA_DIR"

DEFAULT_DATA_DIR = "data"
DEFAULT_KV_URL = "rocksdb:data/kv"
DEFAULT_NAMESPACE = "imgsim"
#: Kvrocks listens on 6666 unless configured otherwise.
KVROCKS_DEFAULT_PORT = 6666


def kv_url(url: str | None = None) -> str:
    """The store URL: the argument, else ``$IMGSIM_KV_URL``, else ``rocksdb:data/kv``."""
    return url or os.environ.get(ENV_KV_URL) or DEFAULT_KV_URL


def namespace(ns: str | None = None) -> str:
    """The key namespace: the argument, else ``$IMGSIM_NAMESPACE``, else ``imgsim``."""
    return ns or os.environ.get(ENV_NAMESPACE) or DEFAULT_NAMESPACE


def data_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """Where snapshots, logs and datasets live: argument, else ``$IMGSIM_DATA_DIR``, else ``data``."""
    return Path(path or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)
