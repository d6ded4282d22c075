"""Pure decisions of the Dask scale-out: addresses, wave plans, partition counts."""

from __future__ import annotations

import pytest

from imgsim_lab.scaleout.cluster import DaskTarget, parse_dask_address
from imgsim_lab.scaleout.ingest import partition_counts, plan_wave, split


def test_dask_addresses() -> None:
    assert parse_dask_address("local:3") == DaskTarget(workers=3)
    assert parse_dask_address("local") == DaskTarget(workers=2)
    assert parse_dask_address("tcp://sched:8786") == DaskTarget(address="tcp://sched:8786")
    assert parse_dask_address("sched:8786") == DaskTarget(address="tcp://sched:8786")
    for bad in ("local:0", "local:x", "", "http://sched:8786", "sched"):
        with pytest.raises(ValueError, match="local:N|at least 1"):
            parse_dask_address(bad)


def test_plan_wave_classifies_in_input_order() -> None:
    seen = {"e"}  # hashed in an earlier wave
    plan = plan_wave(["a", "b", "a", None, "c", "d", "e"], known={"b": True, "c": False}, seen=seen)
    # a new; b stored with every model; a again; unreadable; c missing a model; d new; e earlier
    assert plan.duplicates == 3
    assert plan.primaries == [0, 3, 4, 5]
    assert plan.kind == {0: "new", 3: "unread", 4: "partial", 5: "new"}
    assert seen == {"a", "b", "c", "d", "e"}


def test_partition_counts_put_rejections_on_unreadable_then_new() -> None:
    assert partition_counts(["new", "new", "partial"], 0) == (2, 1)
    assert partition_counts(["new", "unread", "partial"], 1) == (1, 1)
    assert partition_counts(["new", "unread", "partial"], 2) == (0, 1)
    assert partition_counts(["new", "partial"], 2) == (0, 0)


def test_split() -> None:
    assert split(list(range(5)), 2) == [[0, 1], [2, 3], [4]]
    assert split([], 3) == []
