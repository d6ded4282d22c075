"""Ingest throughput: Dask workers against one process, same images and store kind, one run.

``imgsim bench ingest --dask local:2`` measures, in this order and on warm page cache:

- ``serial``: :func:`imgsim_lab.ingest.ingest` in this process with torch on
  ``--serial-threads`` threads (default 2 — one process using both cores);
- ``dask``: :func:`imgsim_lab.scaleout.ingest.dask_ingest` on the cluster (``local:N``:
  N single-thread worker processes), models loaded on every worker before the clock
  starts; ``--scaling`` also runs 1, 2, … N workers.

Each run writes to a fresh store of the same kind: an embedded RocksDB (workers embed,
this process writes) or, with ``--kv redis://…``, a fresh namespace on that server
(workers write). The result's ``ratio`` is dask images/s over serial images/s.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def bench_items(n: int, folder: Path) -> tuple[list, str]:
    """``n`` CIFAR-10 train JPEGs when they are set up, else ``n`` generated 32 px PNGs."""
    from imgsim_lab.config import data_dir
    from imgsim_lab.datasets import ImageItem, cifar10_items, is_complete

    root = data_dir() / "cifar10"
    if is_complete(root):
        return cifar10_items("train", root=root, limit=n, seed=0), "cifar10-train"
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        p = folder / f"{i:06d}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB").save(p)
        items.append(ImageItem(p.name, None, p))
    return items, "generated-32px-png"


def _fresh_store(kv: str | None, tmp: str, tag: str):
    from imgsim_lab.store import open_store

    if kv:
        return open_store(kv, f"bench-{tag}-{uuid.uuid4().hex[:8]}")
    return open_store(f"rocksdb:{tmp}/kv-{tag}", "bench")


def _drop(store) -> None:
    if store.backend != "rocksdb":
        store.flush()


def _serial(items, model_args, kv, tmp, batch_size: int, threads: int, tag: str) -> dict[str, Any]:
    import torch

    from imgsim_lab.ingest import ingest
    from imgsim_lab.models import get_model

    torch.set_num_threads(threads)
    model = get_model(model_args[0], size=model_args[1], **model_args[2])
    torch.set_num_threads(threads)
    cpu0 = time.process_time()
    with _fresh_store(kv, tmp, tag) as store:
        s = ingest(items, store, [model], batch_size=batch_size, progress=False)
        cpu = time.process_time() - cpu0
        _drop(store)
    return {"workers": 0, "threads": threads, "images_per_s": s.seen / s.seconds, "seconds": s.seconds,
            "added": s.added, "cpu_s": cpu, "images_per_cpu_s": s.seen / cpu if cpu else None}


def _dask_run(client, workers: list[str], items, model_args, kv, tmp, batch_size: int,
              partition_size: int, tag: str) -> dict[str, Any]:
    from imgsim_lab.models import get_model
    from imgsim_lab.scaleout.ingest import dask_ingest

    model = get_model(model_args[0], size=model_args[1], **model_args[2])
    cpu0 = _cluster_cpu(client, workers) + time.process_time()
    with _fresh_store(kv, tmp, tag) as store:
        s = dask_ingest(items, store, [model], client=client, kv_url=kv, batch_size=batch_size,
                        partition_size=partition_size, progress=False, workers=workers)
        cpu = _cluster_cpu(client, workers) + time.process_time() - cpu0
        _drop(store)
    return {"workers": len(workers), "threads": 1, "images_per_s": s.seen / s.seconds,
            "seconds": s.seconds, "added": s.added, "cpu_s": cpu,
            "images_per_cpu_s": s.seen / cpu if cpu else None}


def _cpu_seconds() -> float:
    return time.process_time()


def _cluster_cpu(client, workers: list[str]) -> float:  # noqa: ANN001
    """CPU seconds the worker processes have used (user + system), summed."""
    return float(sum(client.run(_cpu_seconds, workers=list(workers)).values()))


def _warm(build_args: list, dask_worker=None) -> int:  # noqa: ANN001 - run by client.run
    from imgsim_lab.scaleout.cluster import PLUGIN_NAME

    plugin = dask_worker.plugins[PLUGIN_NAME]
    return len([plugin.model(a) for a in build_args])


def run_dask_ingest_bench(model_name: str, size: int | None, n: int, batch_size: int, dask: str,
                          kv: str | None = None, serial_threads: int = 2, scaling: bool = False,
                          partition_size: int = 128, rounds: int = 1) -> dict[str, Any]:
    """Serial (one process, ``serial_threads``) against the Dask cluster ``dask``; see the module.

    The cluster starts once; each of ``rounds`` runs the serial ingest, then the cluster
    with 1..N workers (``scaling``) or N, so a drifting machine load hits all alike; the
    ratio is of the medians.
    """
    import statistics

    from imgsim_lab.scaleout.cluster import dask_client

    model_args = (model_name, size, {})
    load0 = os.getloadavg()
    serial_runs: list[dict] = []
    dask_runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="imgsim-bench-dask-") as tmp:
        items, source = bench_items(n, Path(tmp) / "images")
        for it in items:  # warm the page cache: every run reads from memory
            it.read_bytes()
        t_up = time.perf_counter()
        with dask_client(dask) as client:
            client.wait_for_workers(1)
            startup_s = time.perf_counter() - t_up
            addrs = sorted(client.scheduler_info()["workers"])
            client.run(_warm, [model_args])  # every worker loads the model before the clock starts
            counts = range(1, len(addrs) + 1) if scaling else [len(addrs)]
            for r in range(max(1, rounds)):
                one = _serial(items, model_args, kv, tmp, batch_size, serial_threads, f"serial-{r}")
                serial_runs.append(one | {"round": r})
                for w in counts:
                    dask_runs.append(_dask_run(client, addrs[:w], items, model_args, kv, tmp, batch_size,
                                               partition_size, f"dask{w}-{r}") | {"round": r})
    serial = statistics.median(x["images_per_s"] for x in serial_runs)
    by_workers = {w: statistics.median(x["images_per_s"] for x in dask_runs if x["workers"] == w)
                  for w in sorted({x["workers"] for x in dask_runs})}
    top = max(by_workers)
    result = {
        "benchmark": "ingest-dask", "model": model_name, "size": size, "n": len(items), "images": source,
        "batch_size": batch_size, "partition_size": partition_size, "dask": dask, "rounds": rounds,
        "store": "rocksdb (workers embed, client writes)" if not kv else "server (workers write)",
        "serial_threads": serial_threads, "cluster_startup_s": startup_s,
        "serial_runs": serial_runs, "dask_runs": dask_runs,
        "serial_images_per_s": serial, "dask_images_per_s": by_workers[top], "dask_workers": top,
        "ratio": by_workers[top] / serial,
        "scaling": {str(w): v / serial for w, v in by_workers.items()},
        "images_per_s_by_workers": {str(w): v for w, v in by_workers.items()},
        "images_per_cpu_s": {"serial": statistics.median(x["images_per_cpu_s"] for x in serial_runs),
                             **{str(w): statistics.median(x["images_per_cpu_s"] for x in dask_runs
                                                          if x["workers"] == w) for w in by_workers}},
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    log.info("dask ingest bench: serial %.1f img/s, dask %.1f img/s on %d workers (ratio %.2f)",
             serial, by_workers[top], top, result["ratio"])
    return result
