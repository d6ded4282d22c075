"""Every store default in one place, with the environment variable that overrides it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields


def _env(name: str, default: float) -> float:
    v = os.environ.get(name)
    return type(default)(v) if v not in (None, "") else default


@dataclass(frozen=True)
class StoreConfig:
    """Store settings. Each field's metadata names its environment override (``env``).

    ``StoreConfig.from_env()`` reads the overrides; ``StoreConfig()`` is the defaults.
    """

    #: Records per atomic write (one MULTI / one WriteBatch).
    write_batch: int = field(default=256, metadata={"env": "IMGSIM_STORE_WRITE_BATCH"})
    #: Vectors per bulk read (one MGET / one multi-get).
    read_batch: int = field(default=1000, metadata={"env": "IMGSIM_STORE_READ_BATCH"})
    #: Images per round of the write protocol (a few round trips each).
    write_group: int = field(default=4096, metadata={"env": "IMGSIM_STORE_WRITE_GROUP"})
    #: Retries of a command list after a lost connection or a redirection.
    retries: int = field(default=3, metadata={"env": "IMGSIM_STORE_RETRIES"})
    backoff_base: float = field(default=0.05, metadata={"env": "IMGSIM_STORE_BACKOFF_BASE"})
    backoff_cap: float = field(default=1.0, metadata={"env": "IMGSIM_STORE_BACKOFF_CAP"})
    connect_timeout: float = field(default=5.0, metadata={"env": "IMGSIM_STORE_CONNECT_TIMEOUT"})
    socket_timeout: float = field(default=60.0, metadata={"env": "IMGSIM_STORE_SOCKET_TIMEOUT"})
    #: How long a second RocksDB writer waits for the first one.
    lock_timeout: float = field(default=10.0, metadata={"env": "IMGSIM_STORE_LOCK_TIMEOUT"})
    #: A writer's lease (Redis): a repair waits for live writers, a crashed one expires.
    writer_lease: float = field(default=30.0, metadata={"env": "IMGSIM_STORE_WRITER_LEASE"})
    #: How long a repair waits for live writers to finish before giving up.
    maintenance_wait: float = field(default=10.0, metadata={"env": "IMGSIM_STORE_MAINTENANCE_WAIT"})

    @classmethod
    def from_env(cls) -> StoreConfig:
        return cls(**{f.name: _env(f.metadata["env"], f.default) for f in fields(cls)})
