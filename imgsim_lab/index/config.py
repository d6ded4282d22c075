"""The index's settings (:class:`IndexConfig`) and result type (:class:`Hit`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Fingerprint keys of older snapshots that no longer shape the index (the removed hot set).
LEGACY_FINGERPRINT_KEYS = ("hot_fraction",)


@dataclass(frozen=True)
class Hit:
    """One search result: a store id and its cosine similarity to the query."""

    id: int
    score: float


@dataclass(frozen=True)
class IndexConfig:
    """How a :class:`~imgsim_lab.index.SimilarityIndex` is built and searched."""

    mode: str = "auto"                  # "auto": exact if it fits memory_budget, else "budget"; or forced
    memory_budget: int | float | None = None  # bytes, or a fraction (0, 1] of the raw vectors; None: 2 GiB
    k_margin: int = 10                  # over-fetch: k_plus = k + k_margin (+ known exclusions)
    rerank: bool = True                 # budget mode: re-rank candidates with exact float32 vectors
    rerank_factor: float = 8.0          # budget mode: re-rank rerank_factor x k_plus candidates ...
    rerank_min: int = 100               # ... and at least this many
    nlist: int | None = None            # IVF lists; None: decisions.nlist_for(n) (~sqrt(n))
    nprobe: int | None = None           # IVF lists visited; None: decisions.nprobe_for(nlist)
    max_pca_dim: int = 128              # budget mode: PCA output dimension cap (before SQ8 codes)
    train_min: int | None = None        # budget mode: train on >= this many sampled vectors; None: what
    #                                     the factory needs (decisions.sample_size)
    kmeans_iter: int = 10               # k-means iterations when training the IVF
    retrain_growth: float = 2.0         # budget mode: retrain when n grows past this x the trained n
    snapshot_dir: str | Path | None = None  # None: <data_dir>/index/<store slug>/<namespace>/<model>
    duplicate_threshold: float | None = 1e-6  # drop hits scoring >= 1 - this (identical vectors); None: off
    max_widen_rounds: int = 4           # budget mode: candidate widenings before the exact store scan
    chunk_size: int = 16384             # vectors per chunk when streaming from the store
    autosave: bool = True               # save the snapshot after a (re)build or a catch-up that changed it
    build_threads: int | None = None    # faiss threads while building; None: cores - 1 (reader)
    factory: str | None = None          # budget mode: force this faiss factory (None: tuned, else decided)
    tuned: bool = True                  # budget mode: use the setting stored by `imgsim index tune`
    auto_tune: bool = True              # budget mode: quick-tune nprobe/depth after a default build (> 20k)
    tune_target: float = 0.99           # recall@10 target of the automatic quick tune
    auto_tune_min_n: int = 20_000       # ... run only for collections larger than this
    query_cache: int = 1024             # results of repeated identical queries kept (LRU entries); 0: off

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "exact", "budget"):
            raise ValueError(f"mode must be auto, exact or budget, got {self.mode!r}")
        if self.k_margin < 0 or self.rerank_factor < 1 or self.retrain_growth <= 1:
            raise ValueError("k_margin >= 0, rerank_factor >= 1 and retrain_growth > 1 are required")
        if self.query_cache < 0:
            raise ValueError(f"query_cache must be >= 0 entries, got {self.query_cache}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that shape the built index (a snapshot built otherwise is stale)."""
        d = asdict(self)
        out = {k: d[k] for k in ("mode", "memory_budget", "nlist", "max_pca_dim")}
        if self.factory is not None:  # only when forced or tuned: older snapshots stay valid
            out["factory"] = self.factory
        return out

    def fingerprint_matches(self, stored: dict[str, Any]) -> bool:
        """Whether a snapshot's recorded fingerprint describes an index these settings would serve.

        Snapshots made while the index kept a hot set record ``hot_fraction``: it only left part
        of the budget unused by the index (which then fits the whole budget), so it is ignored.
        """
        return {k: v for k, v in stored.items() if k not in LEGACY_FINGERPRINT_KEYS} == self.fingerprint()

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["snapshot_dir"] = None if self.snapshot_dir is None else str(self.snapshot_dir)
        return d
