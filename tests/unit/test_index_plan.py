"""The index's sync plan as pure functions, and the reader-writer lock it relies on."""

from __future__ import annotations

import threading
import time

import pytest

from imgsim_lab.index.plan import (
    MIN_BUDGET_N,
    IndexFacts,
    Plan,
    Step,
    StoreFacts,
    plan_catch_up,
    plan_reshape,
    target_mode,
)
from imgsim_lab.index.rwlock import RWLock


def facts(**kw) -> IndexFacts:
    base = {"epoch": "e1", "watermark": 100, "ntotal": 100, "mode": "exact", "trained_n": 100}
    return IndexFacts(**{**base, **kw})


@pytest.mark.parametrize(("store", "step", "why"), [
    (StoreFacts("e1", 100, None), Step.NOTHING, ""),
    (StoreFacts("e1", 150, None), Step.CATCH_UP, "101..150"),
    (StoreFacts("e2", 150, None), Step.REBUILD, "flushed"),       # flushed and refilled past the watermark
    (StoreFacts("e2", 100, None), Step.REBUILD, "flushed"),       # ... exactly to it
    (StoreFacts(None, 150, None), Step.REBUILD, "flushed"),       # epoch gone (read-only after a flush)
    (StoreFacts("e1", 40, None), Step.REBUILD, "behind"),         # ids only grow: the store was reset
])
def test_plan_catch_up(store, step, why):
    p = plan_catch_up(facts(), store)
    assert p.step is step and why in p.reason


def test_plan_catch_up_of_a_namespace_without_epoch():
    # written before epochs existed and opened read-only: None on both sides is the same namespace
    assert plan_catch_up(facts(epoch=None), StoreFacts(None, 120, None)).step is Step.CATCH_UP
    # a writer gave it an epoch since: the index cannot tell what happened, so it rebuilds
    assert plan_catch_up(facts(epoch=None), StoreFacts("e9", 120, None)).step is Step.REBUILD


def test_plan_reshape_counts_first():
    assert plan_reshape(facts(ntotal=100), 90, "exact", 2.0).step is Step.DROP_DELETED
    grew = plan_reshape(facts(ntotal=100), 120, "exact", 2.0)
    assert grew.step is Step.REBUILD and "old images" in grew.reason
    # a rebuild for this same watermark and count came up short already: no rebuild storm
    assert plan_reshape(facts(ntotal=100), 120, "exact", 2.0, rebuilt_for_count=True).step is Step.NOTHING
    # while a writer keeps adding the count is not comparable: neither drop nor rebuild for it
    assert plan_reshape(facts(ntotal=100), None, "exact", 2.0) == Plan(Step.NOTHING)


def test_plan_reshape_mode_and_retrain():
    assert plan_reshape(facts(), 100, "budget", 2.0).step is Step.REBUILD
    budget = facts(mode="budget", ntotal=300, trained_n=200)
    assert plan_reshape(budget, 300, "budget", 2.0) == Plan(Step.NOTHING)
    retrain = plan_reshape(facts(mode="budget", ntotal=401, trained_n=200), 401, "budget", 2.0)
    assert retrain.step is Step.REBUILD and "since training" in retrain.reason
    assert plan_reshape(budget, 300, "exact", 2.0).step is Step.REBUILD  # shrank below the switch


def test_target_mode():
    dim = 16
    per_vector = 4 * dim + 56  # flat float32 + id + reverse map
    assert target_mode(1000, dim, 1000 * per_vector) == "exact"
    assert target_mode(1000, dim, 1000 * per_vector - 1) == "budget"
    assert target_mode(MIN_BUDGET_N - 1, dim, 1) == "exact"  # too few to train
    assert target_mode(MIN_BUDGET_N - 1, dim, 1, "budget") == "exact"
    assert target_mode(10**6, dim, 10**12, "budget") == "budget"


def test_rwlock_readers_share_and_a_writer_excludes_them():
    lock = RWLock()
    inside, peak, order = [0], [0], []
    guard = threading.Lock()

    def reader() -> None:
        with lock.read():
            with guard:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.05)
            with guard:
                inside[0] -= 1
                order.append("r")

    def writer() -> None:
        with lock.write(), guard:
            order.append(f"w{inside[0]}")  # readers inside while writing

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    time.sleep(0.01)
    w = threading.Thread(target=writer)
    w.start()
    for t in [*readers, w]:
        t.join(5)
    assert peak[0] == 3  # the readers overlapped
    assert order == ["r", "r", "r", "w0"]  # the writer waited for all of them
