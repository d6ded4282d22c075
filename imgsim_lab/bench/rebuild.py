"""Full rebuilds of one forced factory from the store, and a read-only pass as their ceiling."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

from imgsim_lab.index import SimilarityIndex
from imgsim_lab.index.config import IndexConfig
from imgsim_lab.index.similarity import configure_threads
from imgsim_lab.index.tune import faiss_threads
from imgsim_lab.store import Store


def add_store_args(ap: argparse.ArgumentParser) -> None:
    """The options every rebuild A/B script takes: the store, the model, rounds, a JSON path."""
    ap.add_argument("--kv", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the result here too")


def read_pass(store: Store, model: str, chunk: int = 16384) -> float:
    """Seconds of one read-only pass over the stored vectors (nothing kept): a rebuild's ceiling."""
    t = time.perf_counter()
    for _ in store.iter_embeddings(model, chunk_size=chunk):
        pass
    return time.perf_counter() - t


def forced_rebuild(store: Store, model: str, factory: str, threads: int | None = None) -> dict[str, float]:
    """The phase timings (``sample``, ``train``, ``read_wait``, ``add``, ``stream``, ``total``) of
    one build of ``factory`` at a 10 % budget: no tune, a fresh snapshot directory (so the index
    builds as it opens), faiss on ``threads`` OpenMP threads (``None``: the process' setting)."""
    configure_threads()  # decided once per process: before the override, not inside it
    with tempfile.TemporaryDirectory() as tmp:
        cfg = IndexConfig(mode="budget", memory_budget=0.1, factory=factory, auto_tune=False,
                          tuned=False, autosave=False, snapshot_dir=tmp)
        with faiss_threads(threads) if threads else contextlib.nullcontext():
            idx = SimilarityIndex(store, model, cfg)
        return dict(idx.last_rebuild_timings)
