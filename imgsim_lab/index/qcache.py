"""A bounded LRU cache of whole search results for repeated identical queries.

Users re-search the same images: on a Zipf-like stream most queries repeat an earlier one
(docs/index.md, "Why there is no hot set"). An entry is keyed by a digest of the normalized
query vector's bytes, ``k``, the exclusions and the search settings, and it belongs to the
index state it was computed on: when :class:`~imgsim_lab.index.SimilarityIndex` publishes
another state (a catch-up, an add, a remove, a rebuild: any change of its epoch, watermark
or vectors), the whole cache is dropped on the next lookup.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from imgsim_lab.index.config import Hit


def query_key(q: np.ndarray, k: int, excl: Iterable[int], settings: Hashable) -> tuple:
    """The cache key of a search: the query's bytes (digest), ``k``, sorted exclusions, settings."""
    digest = hashlib.blake2b(np.ascontiguousarray(q, np.float32).tobytes(), digest_size=16).digest()
    return digest, int(q.shape[-1]), int(k), tuple(sorted(int(i) for i in excl)), settings


class QueryCache:
    """LRU of ``key -> hits`` for one index state at a time; ``capacity`` 0 disables it.

    Thread-safe. :meth:`get` and :meth:`put` take the state the search read: a state other
    than the cached one clears the cache (lookup) or is not stored (a result computed on a
    state that was replaced meanwhile).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"query cache capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple, tuple[Hit, ...]] = OrderedDict()
        self._state: object | None = None  # strong ref: identity stays unique while cached
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

    def _bind(self, state: object) -> None:
        if state is not self._state:
            if self._entries:
                self.invalidations += 1
            self._entries.clear()
            self._state = state

    def get(self, state: object, key: tuple) -> list[Hit] | None:
        """The cached hits of ``key`` on ``state`` (a copy), or ``None`` (counted as a miss)."""
        if not self.capacity:
            return None
        with self._lock:
            self._bind(state)
            hits = self._entries.get(key)
            if hits is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return list(hits)

    def put(self, state: object, key: tuple, hits: list[Hit]) -> None:
        """Remember ``hits`` for ``key`` if ``state`` is still the cached one; evicts the LRU entry."""
        if not self.capacity:
            return
        with self._lock:
            if self._state is not None and state is not self._state:
                return  # computed on a state replaced meanwhile
            self._bind(state)
            self._entries[key] = tuple(hits)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        with self._lock:
            self._entries.clear()
            self._state = None

    def stats(self) -> dict[str, Any]:
        """Capacity, entries, hits, misses, hit rate and how often a state change dropped entries."""
        with self._lock:
            looked = self.hits + self.misses
            return {"capacity": self.capacity, "entries": len(self._entries), "hits": self.hits,
                    "misses": self.misses, "hit_rate": self.hits / looked if looked else 0.0,
                    "invalidations": self.invalidations}
