"""Full rebuilds of one forced factory from the store, for the A/B scripts in ``scripts/``."""

from __future__ import annotations

import argparse
import contextlib
import tempfile

from imgsim_lab.index import SimilarityIndex
from imgsim_lab.index.config import IndexConfig
from imgsim_lab.index.tune import faiss_threads
from imgsim_lab.store import Store


def add_store_args(ap: argparse.ArgumentParser) -> None:
    """The options every rebuild A/B script takes: the store, the model, rounds, a JSON path."""
    ap.add_argument("--kv", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the result here too")


def forced_rebuild(store: Store, model: str, factory: str, threads: int | None = None) -> dict[str, float]:
    """The phase timings (``sample``, ``train``, ``read_wait``, ``add``, ``stream``, ``total``) of
    a rebuild of ``factory`` at a 10 % budget: no tune, a fresh snapshot directory, faiss on
    ``threads`` OpenMP threads during the rebuild (``None``: the index's own setting)."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = IndexConfig(mode="budget", memory_budget=0.1, factory=factory, auto_tune=False,
                          tuned=False, autosave=False, snapshot_dir=tmp)
        idx = SimilarityIndex(store, model, cfg)
        # the index's own thread setting is decided once per process: override it around the rebuild
        with faiss_threads(threads) if threads else contextlib.nullcontext():
            idx.rebuild()
        return dict(idx.last_rebuild_timings)
