"""The worker plugin: per-worker torch thread cap, cached models and store connections."""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from distributed import WorkerPlugin

from imgsim_lab.scaleout.cluster import PLUGIN_NAME

log = logging.getLogger(__name__)


class ImgsimWorkerPlugin(WorkerPlugin):
    """Per-worker state: torch thread cap, built models and open stores (cached)."""

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self.models: dict[tuple, Any] = {}
        self.stores: dict[tuple, Any] = {}
        self.model_loads = 0
        self.lock = threading.Lock()
        self.nthreads = 1

    def __getstate__(self) -> dict:  # sent to workers empty: caches are per worker
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def setup(self, worker) -> None:  # noqa: ANN001 - distributed.Worker
        self.nthreads = int(getattr(worker.state, "nthreads", None) or getattr(worker, "nthreads", 1) or 1)
        from imgsim_lab.models.base import set_thread_limit

        set_thread_limit(self.nthreads)

    def teardown(self, worker) -> None:  # noqa: ANN001
        for store in self.stores.values():
            with contextlib.suppress(Exception):
                store.close()
        self.stores.clear()
        self.models.clear()

    def model(self, build_args: tuple):
        """The model built from ``(name, size, options)``, built on first use only."""
        key = (build_args[0], build_args[1], tuple(sorted(build_args[2].items())))
        with self.lock:
            m = self.models.get(key)
            if m is None:
                from imgsim_lab.models import get_model

                m = get_model(build_args[0], size=build_args[1], **build_args[2])
                self.models[key] = m
                self.model_loads += 1
                log.info("worker loaded model %s", m.key)
            return m

    def store(self, url: str, namespace: str):
        """An open store for ``url``/``namespace``, kept open for later partitions."""
        key = (url, namespace)
        with self.lock:
            s = self.stores.get(key)
            if s is None:
                from imgsim_lab.store import open_store

                s = self.stores[key] = open_store(url, namespace)
            return s
