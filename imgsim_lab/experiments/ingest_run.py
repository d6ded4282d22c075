"""``notebooks/01_ingest.ipynb``: set CIFAR-10 (or a folder) up, ingest it, build the indexes."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgsim_lab.experiments.benchmark import FIXED_SIZE_MODELS, environment
from imgsim_lab.experiments.dataset import load_items
from imgsim_lab.experiments.params import checked_params
from imgsim_lab.experiments.paths import resolve_data_dir, resolve_dataset, resolve_output_dir
from imgsim_lab.jsonio import write_json

log = logging.getLogger(__name__)


@dataclass
class IngestParams:
    """Parameters of the ingest notebook."""

    dataset: str = "cifar10"            # "cifar10", or a folder holding <split>/<class>/ (or any folder)
    split: str = "train"                # CIFAR-10 split (or sub-folder) to ingest
    data_dir: str | None = None         # None: $IMGSIM_DATA_DIR or <repo>/data
    cifar10_source: str | None = None   # archive to set CIFAR-10 up from (None: the shared local zip)
    limit: int | None = 5000            # class-balanced subset size (None: everything)
    models: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    input_size: int | None = None       # learned models' input px (None: default)
    kv_url: str | None = None           # None: $IMGSIM_KV_URL, else rocksdb:<data_dir>/kv
    namespace: str | None = None        # None: $IMGSIM_NAMESPACE, else imgsim
    index_mode: str = "auto"            # index to build after ingest: auto | exact | budget
    memory_budget: float | int | None = None
    seed: int = 0
    batch_size: int = 64
    output_dir: str | None = None       # metrics.json (None: <repo>/experiments/runs/ingest)
    progress: bool = True
    dask: str | None = None             # Dask cluster to embed on: local:N | tcp://host:8786

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> IngestParams:
        return checked_params(cls, values, "ingest")


def run_ingest(params: IngestParams | dict[str, Any]) -> dict[str, Any]:
    """Ingest the subset with every model, sync each model's index; write ``metrics.json``."""
    from imgsim_lab import config
    from imgsim_lab.index import IndexConfig, SimilarityIndex
    from imgsim_lab.models import get_model
    from imgsim_lab.scaleout.ingest import ingest_function
    from imgsim_lab.store import open_store

    p = params if isinstance(params, IngestParams) else IngestParams.from_dict(params)
    ingest = ingest_function(p.dask)
    t0 = time.perf_counter()
    p.dataset = resolve_dataset(p.dataset)
    data_dir = resolve_data_dir(p.data_dir)
    out = resolve_output_dir(p.output_dir, default="ingest")
    items = load_items(p.dataset, p.split, p.limit, p.seed, data_dir, p.cifar10_source, p.progress)
    kv_url = p.kv_url or config.Settings.from_env(data_dir=data_dir).kv_url
    models = [get_model(n, size=None if n in FIXED_SIZE_MODELS else p.input_size) for n in p.models]
    result: dict[str, Any] = {"params": dataclasses.asdict(p), "kv_url": kv_url, "images": len(items),
                              "environment": environment(), "models": {}}
    with open_store(kv_url, p.namespace) as store:
        result["namespace"] = store.namespace
        for m in models:
            summary = ingest(items, store, [m], batch_size=p.batch_size, progress=p.progress)
            cfg = IndexConfig(mode=p.index_mode, memory_budget=p.memory_budget,
                              snapshot_dir=snapshot_dir(data_dir, store, m.key))
            t = time.perf_counter()
            index = SimilarityIndex(store, m.key, config=cfg)
            index.sync()
            index.save()
            stats = index.stats()
            result["models"][m.name] = {"key": m.key, "size": m.size, "dim": m.dim,
                                        "ingest": summary.to_dict(), "index_s": time.perf_counter() - t,
                                        "index": stats}
            log.info("%s: %s; index %s (%d vectors)", m.key, summary.to_dict(), stats["mode"],
                     stats["ntotal"])
        result["store"] = store.info()
    result["seconds"] = time.perf_counter() - t0
    result["output_dir"] = str(out)
    write_json(out / "metrics.json", result)
    return result


def snapshot_dir(data_dir: Path, store, model_key: str) -> Path:
    """The index's default snapshot place, anchored on ``data_dir`` instead of the cwd.

    Same layout as :func:`imgsim_lab.index.snapshot.default_dir`, so a search session
    with the same data directory loads this snapshot instead of rebuilding it.
    """
    from imgsim_lab.index.snapshot import store_dirname

    path = getattr(store, "path", None)
    identity = f"rocksdb:{Path(path).resolve()}" if store.backend == "rocksdb" and path else store.url
    return data_dir / "index" / store_dirname(identity) / store.namespace / model_key


def ingest_table(result: dict[str, Any]) -> str:
    """Markdown: per model, what ingest did and the index it built."""
    head = ["model", "key", "added", "embedded", "duplicates", "rejected", "img/s", "index mode",
            "vectors", "index MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in result["models"].items():
        g, ix = m["ingest"], m["index"]
        lines.append(f"| {name} | {m['key']} | {g['added']} | {g['embedded']} | {g['duplicates']} | "
                     f"{g['rejected_total']} | {g['images_per_s']:.1f} | {ix['mode']} | {ix['ntotal']} | "
                     f"{ix['index_bytes'] / 1e6:.1f} |")
    return "\n".join(lines)
