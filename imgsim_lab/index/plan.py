"""What keeping an index in step with its store requires, as pure typed functions.

:class:`~imgsim_lab.index.SimilarityIndex` gathers facts (:class:`IndexFacts` about
the state it serves, :class:`StoreFacts` about the store now), asks these functions
what to do, does it aside, and swaps the result in. Nothing here touches a store or
an index, so every rule is unit-tested on numbers alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from imgsim_lab.index import decisions

#: Budget mode needs this many vectors to train PCA and IVF; fewer are indexed exactly.
MIN_BUDGET_N = 64


class Step(StrEnum):
    """One thing to do next."""

    NOTHING = "nothing"
    CATCH_UP = "catch_up"          # add the ids past the index's watermark
    DROP_DELETED = "drop_deleted"  # find the ids the store lost and remove them
    REBUILD = "rebuild"            # build a new state from the store and swap it in


@dataclass(frozen=True)
class Plan:
    """The step and why (the reason is what the log says)."""

    step: Step
    reason: str = ""


@dataclass(frozen=True)
class IndexFacts:
    """What the served state holds."""

    epoch: str | None   # the store epoch it was built from
    watermark: int      # every id <= this was considered
    ntotal: int         # vectors held
    mode: str           # "exact" | "budget"
    trained_n: int      # vectors at the last (re)build


@dataclass(frozen=True)
class StoreFacts:
    """What the store says now."""

    epoch: str | None
    watermark: int          # the store's committed id watermark
    count: int | None       # vectors of the model; None while a writer keeps adding (not comparable)


def target_mode(n: int, dim: int, budget_bytes: int, requested: str = "auto",
                min_budget_n: int = MIN_BUDGET_N) -> str:
    """The mode ``n`` vectors call for: budget only when exact does not fit and n can train it."""
    mode = decisions.choose_mode(n, dim, budget_bytes, requested)
    return "exact" if mode == "budget" and n < min_budget_n else mode


def plan_catch_up(index: IndexFacts, store: StoreFacts) -> Plan:
    """Before reading anything: is the state still of this namespace, and is it behind?"""
    if store.epoch != index.epoch:
        return Plan(Step.REBUILD, f"the namespace was flushed or recreated (epoch {index.epoch} -> "
                                  f"{store.epoch})")
    if store.watermark < index.watermark:
        return Plan(Step.REBUILD, f"the store's id watermark {store.watermark} is behind the "
                                  f"index's {index.watermark} (ids only grow)")
    if store.watermark > index.watermark:
        return Plan(Step.CATCH_UP, f"ids {index.watermark + 1}..{store.watermark} are new")
    return Plan(Step.NOTHING)


def plan_reshape(index: IndexFacts, store_count: int | None, wanted_mode: str,
                 retrain_growth: float, rebuilt_for_count: bool = False) -> Plan:
    """After catching up: deletions, embeddings of old ids, mode switch, retraining.

    ``wanted_mode`` is :func:`target_mode` of the index's size. ``rebuilt_for_count``: a
    rebuild for this same store watermark and count already ran and still came up short
    (the store's count and its listing disagree), so another one would not help until
    either moves.
    """
    if store_count is not None and index.ntotal > store_count:
        return Plan(Step.DROP_DELETED, f"the index holds {index.ntotal} vectors, the store {store_count}")
    if store_count is not None and index.ntotal < store_count and not rebuilt_for_count:
        return Plan(Step.REBUILD, f"the index holds {index.ntotal} vectors but the store {store_count} "
                                  "(embeddings added to old images)")
    if wanted_mode != index.mode:
        return Plan(Step.REBUILD, f"{index.ntotal} vectors call for {wanted_mode} mode")
    if index.mode == "budget" and decisions.needs_retrain(index.ntotal, index.trained_n, retrain_growth):
        return Plan(Step.REBUILD, f"grew from {index.trained_n} to {index.ntotal} vectors since training")
    return Plan(Step.NOTHING)
