"""Dask cluster addresses, clients, and the per-worker cache of models and stores.

``local:N`` starts a :class:`distributed.LocalCluster` of ``N`` worker processes with one
thread each; ``tcp://host:8786`` (or ``host:8786``) connects to a running scheduler.
Every worker gets :class:`~imgsim_lab.scaleout.plugin.ImgsimWorkerPlugin`, which caps
torch at the worker's thread count and keeps each model and each store connection it
builds for the worker's life, so a model is loaded once per worker, never per partition.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

PLUGIN_NAME = "imgsim"
_LOCAL_RE = re.compile(r"^local(?::(\d+))?$")


@dataclass(frozen=True)
class DaskTarget:
    """Where to compute: ``workers`` local processes, or the scheduler at ``address``."""

    workers: int | None = None
    address: str | None = None

    @property
    def is_local(self) -> bool:
        return self.address is None


def parse_dask_address(text: str) -> DaskTarget:
    """``local:N`` (N ≥ 1, default 2), ``tcp://host:port`` or ``host:port``; ValueError otherwise."""
    text = (text or "").strip()
    m = _LOCAL_RE.match(text)
    if m:
        n = int(m.group(1) or 2)
        if n < 1:
            raise ValueError(f"--dask {text!r}: a local cluster needs at least 1 worker")
        return DaskTarget(workers=n)
    if re.match(r"^(tcp|tls|ws|wss|inproc)://\S+$", text):
        return DaskTarget(address=text)
    if re.match(r"^[A-Za-z0-9_.-]+:\d+$", text):
        return DaskTarget(address=f"tcp://{text}")
    raise ValueError(f"--dask {text!r}: expected local:N or tcp://HOST:PORT (e.g. tcp://sched:8786)")


def worker_plugin():
    """The plugin of the worker running the current task (registered on demand)."""
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None:  # a worker that joined without it (e.g. an external cluster)
        from imgsim_lab.scaleout.plugin import ImgsimWorkerPlugin

        plugin = ImgsimWorkerPlugin()
        plugin.setup(worker)
        worker.plugins[PLUGIN_NAME] = plugin
    return plugin


def _start_local(workers: int, **cluster_kwargs: Any):
    from distributed import LocalCluster

    kwargs: dict[str, Any] = {"n_workers": workers, "threads_per_worker": 1, "processes": True,
                              "dashboard_address": ":0", "silence_logs": logging.WARNING}
    kwargs.update(cluster_kwargs)
    return LocalCluster(**kwargs)


@contextlib.contextmanager
def dask_client(target: str | DaskTarget, **cluster_kwargs: Any) -> Iterator[Any]:
    """A :class:`distributed.Client` for ``target`` with the worker plugin registered.

    A ``local:N`` cluster lives for the ``with`` block; an external scheduler is only
    connected to (and left running).
    """
    from distributed import Client

    t = parse_dask_address(target) if isinstance(target, str) else target
    quiet = logging.getLogger("distributed")
    if quiet.getEffectiveLevel() > logging.DEBUG:  # its INFO/WARNING chatter is not ours to show
        quiet.setLevel(logging.ERROR)
    cluster = _start_local(t.workers or 2, **cluster_kwargs) if t.is_local else None
    try:
        client = Client(cluster if cluster is not None else t.address, set_as_default=False)
        try:
            register_plugin(client)
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def register_plugin(client) -> None:  # noqa: ANN001
    """Register :class:`ImgsimWorkerPlugin` on every current and future worker."""
    from imgsim_lab.scaleout.plugin import ImgsimWorkerPlugin

    client.register_plugin(ImgsimWorkerPlugin(), name=PLUGIN_NAME)


_SHARED: dict[str, tuple[contextlib.ExitStack, Any]] = {}
_SHARED_LOCK = threading.Lock()


def shared_client(target: str) -> Any:
    """A client for ``target`` kept for this process's life (notebooks call ingest repeatedly)."""
    with _SHARED_LOCK:
        if target not in _SHARED:
            stack = contextlib.ExitStack()
            client = stack.enter_context(dask_client(target))
            _SHARED[target] = (stack, client)
        return _SHARED[target][1]


@atexit.register
def close_shared_clients() -> None:
    with _SHARED_LOCK:
        for stack, _ in _SHARED.values():
            with contextlib.suppress(Exception):
                stack.close()
        _SHARED.clear()




def dask_address_arg(text: str) -> str:
    """argparse ``type=``: a valid ``--dask`` value, unchanged (ArgumentTypeError otherwise)."""
    import argparse

    try:
        parse_dask_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
