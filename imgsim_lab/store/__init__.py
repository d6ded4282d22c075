"""The KV store: one interface (:class:`Store`), two backends chosen by URL.

``open_store(url)`` with

- ``rocksdb:PATH`` — embedded RocksDB (default ``rocksdb:data/kv``), no server needed;
- ``redis://[user:password@]host:port/db`` or ``rediss://…`` — Apache Kvrocks (port
  6666 by default) or any Redis-protocol server;
- ``redis+cluster://[user:password@]host:port[,host:port...]`` or ``rediss+cluster://…`` —
  a Kvrocks cluster or a Redis Cluster (:mod:`imgsim_lab.store.cluster_store`).

The URL is the argument, else ``$IMGSIM_KV_URL``, else the default. The key schema is
documented in :mod:`imgsim_lab.store.schema`.
"""

from __future__ import annotations

from imgsim_lab import config
from imgsim_lab.store.base import Store
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
    UnknownModelError,
)
from imgsim_lab.store.schema import AddResult, Keys, ModelInfo, NewImage, Record
from imgsim_lab.store.url import parse_url, redact_url

__all__ = [
    "AddResult", "CorruptDataError", "DimensionMismatchError", "InvalidURLError", "Keys",
    "ModelInfo", "ModelMismatchError", "NewImage", "ReadOnlyStoreError", "Record", "Store",
    "StoreAuthError", "StoreConnectionError", "StoreError", "StoreLockedError",
    "UnknownModelError", "open_store", "parse_url", "redact_url",
]


def open_store(url: str | None = None, namespace: str | None = None, *, read_only: bool = False,
               lock_timeout: float | None = None) -> Store:
    """Open the store at ``url`` (argument, ``$IMGSIM_KV_URL``, or ``rocksdb:data/kv``).

    ``read_only`` opens an embedded store as a secondary that follows the writer, so
    another process can keep writing; a Redis store rejects writes.
    ``lock_timeout`` is how long a second RocksDB writer waits before failing.
    """
    url = config.kv_url(url)
    ns = config.namespace(namespace)
    scheme, target = parse_url(url)
    if scheme == "rocksdb":
        from imgsim_lab.store.rocks import DEFAULT_LOCK_TIMEOUT, RocksStore

        return RocksStore(target, ns, read_only=read_only,
                          lock_timeout=DEFAULT_LOCK_TIMEOUT if lock_timeout is None else lock_timeout)
    if scheme in ("redis+cluster", "rediss+cluster"):
        from imgsim_lab.store.cluster_store import RedisClusterStore

        return RedisClusterStore(url, redact_url(url), ns, read_only=read_only)
    from imgsim_lab.store.redis_store import RedisStore

    return RedisStore(url, redact_url(url), ns, read_only=read_only)
