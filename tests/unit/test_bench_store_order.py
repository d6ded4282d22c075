"""The order of ``imgsim bench store``'s interleaved reads (a pure decision)."""

from __future__ import annotations

from imgsim_lab.bench.store import read_order

FIVE = [("rocksdb", False), ("redis", False), ("kvrocks", False), ("redis", True), ("kvrocks", True)]


def test_each_cluster_is_read_beside_its_single_node_and_they_swap_every_round() -> None:
    orders = read_order(FIVE, 4)
    assert orders[0] == [0, 1, 3, 2, 4] and orders[1] == [0, 3, 1, 4, 2]
    assert orders[2] == orders[0] and orders[3] == orders[1]
    for order in orders:
        assert sorted(order) == [0, 1, 2, 3, 4]
        for single, cluster in ((1, 3), (2, 4)):
            assert abs(order.index(single) - order.index(cluster)) == 1


def test_stores_without_a_partner_are_read_once_per_round_in_their_place() -> None:
    kinds = [("redis", True), ("rocksdb", False), ("kvrocks", True), ("redis", False)]
    assert read_order(kinds, 2) == [[1, 2, 3, 0], [1, 2, 0, 3]]
    assert read_order([("redis", False)], 3) == [[0], [0], [0]]
    assert read_order(FIVE, 0) == []
