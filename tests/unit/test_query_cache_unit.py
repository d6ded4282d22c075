"""The query-result cache as a plain data structure: keys, LRU bound, one index state at a time."""

from __future__ import annotations

import numpy as np
import pytest

from imgsim_lab.index.config import Hit, IndexConfig
from imgsim_lab.index.qcache import QueryCache, query_key


def _q(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 8)).astype(np.float32)


def test_query_key_tells_apart_what_changes_a_result():
    q, cfg = _q(0), IndexConfig()
    base = query_key(q, 10, {3, 1}, cfg)
    assert base == query_key(q.copy(), 10, [1, 3], cfg)  # same bytes, exclusions in any order
    assert base != query_key(q, 5, {1, 3}, cfg)
    assert base != query_key(q, 10, {1}, cfg)
    assert base != query_key(q + np.float32(1e-6), 10, {1, 3}, cfg)
    assert base != query_key(q, 10, {1, 3}, IndexConfig(nprobe=64))
    assert hash(base) == hash(query_key(q, 10, (3, 1), IndexConfig()))


def test_lru_bound_and_counters():
    c, st = QueryCache(2), object()
    a, b, d = (query_key(_q(i), 10, (), None) for i in range(3))
    assert c.get(st, a) is None
    c.put(st, a, [Hit(1, 0.9)])
    c.put(st, b, [Hit(2, 0.8)])
    assert c.get(st, a) == [Hit(1, 0.9)]  # a is now the most recent
    c.put(st, d, [Hit(3, 0.7)])  # evicts b
    assert c.get(st, b) is None and c.get(st, d) == [Hit(3, 0.7)]
    s = c.stats()
    assert (s["entries"], s["hits"], s["misses"], s["capacity"]) == (2, 2, 2, 2)
    assert s["hit_rate"] == pytest.approx(0.5)
    got = c.get(st, a)
    got.append(Hit(9, 0.1))  # callers get a copy
    assert c.get(st, a) == [Hit(1, 0.9)]


def test_another_state_drops_everything_and_stale_results_are_not_stored():
    c, old, new = QueryCache(4), object(), object()
    k = query_key(_q(0), 10, (), None)
    c.put(old, k, [Hit(1, 0.9)])
    assert c.get(new, k) is None and c.stats()["entries"] == 0 and c.stats()["invalidations"] == 1
    c.put(old, k, [Hit(1, 0.9)])  # computed on the replaced state: ignored
    assert c.get(new, k) is None
    c.put(new, k, [Hit(2, 0.5)])
    assert c.get(new, k) == [Hit(2, 0.5)]
    c.clear()
    assert c.stats()["entries"] == 0 and c.get(new, k) is None


def test_capacity_zero_disables_and_negative_is_rejected():
    c, st = QueryCache(0), object()
    k = query_key(_q(0), 10, (), None)
    c.put(st, k, [Hit(1, 0.9)])
    assert c.get(st, k) is None and c.stats() == {"capacity": 0, "entries": 0, "hits": 0, "misses": 0,
                                                  "hit_rate": 0.0, "invalidations": 0}
    with pytest.raises(ValueError):
        QueryCache(-1)
    with pytest.raises(ValueError):
        IndexConfig(query_cache=-1)
    assert "query_cache" not in IndexConfig(query_cache=7).fingerprint()  # never makes a snapshot stale
