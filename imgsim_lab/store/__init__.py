"""The KV store: one interface (:class:`Store`), two backends chosen by URL.

``open_store(url)`` with

- ``rocksdb:PATH`` — embedded RocksDB (default ``rocksdb:data/kv``), no server needed;
- ``redis://[user:password@]host:port/db`` or ``rediss://…`` — Apache Kvrocks (port
  6666 by default) or any Redis-protocol server;
- ``redis+cluster://[user:password@]host:port[,host:port...]`` or ``rediss+cluster://…`` —
  a Kvrocks cluster or a Redis Cluster — the same :class:`~imgsim_lab.store.redis_store.RespStore`
  over a cluster transport (:mod:`imgsim_lab.store.transport`).

The URL is the argument, else ``$IMGSIM_KV_URL``, else the default. The key schema is
documented in :mod:`imgsim_lab.store.schema`.
"""

from __future__ import annotations

from imgsim_lab import config as config_mod
from imgsim_lab.store.base import Store
from imgsim_lab.store.config import StoreConfig
from imgsim_lab.store.errors import (
    CorruptDataError,
    DimensionMismatchError,
    InvalidURLError,
    ModelMismatchError,
    ReadOnlyStoreError,
    StoreAuthError,
    StoreConnectionError,
    StoreError,
    StoreLockedError,
    StoreNotFoundError,
    UnknownModelError,
)
from imgsim_lab.store.schema import AddResult, Keys, ModelInfo, NewImage, Record
from imgsim_lab.store.url import parse_url, redact_url

__all__ = [
    "AddResult", "CorruptDataError", "DimensionMismatchError", "InvalidURLError", "Keys",
    "ModelInfo", "ModelMismatchError", "NewImage", "ReadOnlyStoreError", "Record", "Store",
    "StoreAuthError", "StoreConfig", "StoreConnectionError", "StoreError", "StoreLockedError",
    "StoreNotFoundError",
    "UnknownModelError", "open_store", "parse_url", "redact_url",
]


def open_store(url: str | None = None, namespace: str | None = None, *, read_only: bool = False,
               lock_timeout: float | None = None, must_exist: bool | None = None,
               config: StoreConfig | None = None) -> Store:
    """Open the store at ``url`` (argument, ``$IMGSIM_KV_URL``, or ``rocksdb:data/kv``).

    ``read_only`` opens an embedded store as a secondary that follows the writer, so
    another process can keep writing; a Redis store rejects writes.
    ``must_exist`` (default: ``read_only``) refuses to create an embedded store: it raises
    :class:`StoreNotFoundError` (``no store at …``) instead — read-only commands use it.
    ``lock_timeout`` is how long a second RocksDB writer waits before failing.
    """
    url = config_mod.kv_url(url)
    ns = config_mod.namespace(namespace)
    cfg = config or StoreConfig.from_env()
    must_exist = read_only if must_exist is None else must_exist
    scheme, target = parse_url(url)
    if scheme == "rocksdb":
        from pathlib import Path

        from imgsim_lab.store.rocks import RocksStore

        if must_exist and not (Path(target) / "CURRENT").exists():
            raise StoreNotFoundError(f"no store at {url}: check the path, or ingest something first")
        return RocksStore(target, ns, read_only=read_only,
                          lock_timeout=cfg.lock_timeout if lock_timeout is None else lock_timeout)
    from imgsim_lab.store.redis_store import RespStore

    return RespStore(url, redact_url(url), ns, read_only=read_only, config=cfg)
