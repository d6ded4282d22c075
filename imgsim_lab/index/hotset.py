"""The hot set: full-precision vectors that queries keep hitting, kept in RAM (LFU)."""

from __future__ import annotations

import threading

import numpy as np


class HotSet:
    """At most ``capacity`` vectors, admitted and evicted by hit frequency (LFU).

    Frequencies are counted for every id a query returns, cached or not; an id is
    admitted when its count beats the least frequent cached id. Counts of uncached
    ids are halved when the table grows past ``2 x capacity + 1024`` (ageing).
    Safe for concurrent use: every method holds the set's own lock.
    """

    def __init__(self, capacity: int, dim: int) -> None:
        self.capacity = max(0, int(capacity))
        self.dim = dim
        self._vecs = np.empty((self.capacity, dim), np.float32)
        self._slot_id = np.full(self.capacity, -1, np.int64)
        self._slot_freq = np.zeros(self.capacity, np.int64)
        self._slot: dict[int, int] = {}
        self._freq: dict[int, int] = {}
        self.lookups = 0
        self.hits = 0
        self._lock = threading.Lock()

    def resized(self, capacity: int) -> HotSet:
        """A copy with another capacity, keeping the most frequent cached vectors and the counts."""
        with self._lock:
            return self._resized(capacity)

    def _resized(self, capacity: int) -> HotSet:
        new = HotSet(capacity, self.dim)
        used = len(self._slot)
        keep = np.argsort(-self._slot_freq[:used], kind="stable")[: new.capacity]
        for r, s in enumerate(keep.tolist()):
            i = int(self._slot_id[s])
            new._slot[i] = r
            new._slot_id[r] = i
            new._slot_freq[r] = self._slot_freq[s]
            new._vecs[r] = self._vecs[s]
        new._freq = dict(self._freq)
        new.lookups, new.hits = self.lookups, self.hits
        return new

    def __len__(self) -> int:
        with self._lock:
            return len(self._slot)

    @property
    def nbytes(self) -> int:
        return int(self._vecs.nbytes + self._slot_id.nbytes + self._slot_freq.nbytes
                   + 64 * (self.capacity + len(self._freq)))

    @property
    def hit_rate(self) -> float:
        with self._lock:
            return self.hits / self.lookups if self.lookups else 0.0

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mask of cached ids, copies of their vectors in order)``; counts lookups and hits."""
        with self._lock:
            return self._lookup(ids)

    def _lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mask = np.fromiter((int(i) in self._slot for i in ids), bool, len(ids)) if self._slot else \
            np.zeros(len(ids), bool)
        self.lookups += len(ids)
        nh = int(mask.sum())
        self.hits += nh
        if not nh:
            return mask, np.empty((0, self.dim), np.float32)
        slots = [self._slot[int(i)] for i in ids[mask]]
        return mask, self._vecs[slots]  # fancy indexing copies: later evictions cannot change it

    def record(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Count a hit for each id (its vector given) and admit frequent ones."""
        if self.capacity == 0:
            return
        with self._lock:
            self._record(ids, vectors)

    def _record(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        for i, v in zip(ids.tolist(), vectors, strict=True):
            f = self._freq.get(i, 0) + 1
            self._freq[i] = f
            s = self._slot.get(i)
            if s is not None:
                self._slot_freq[s] = f
                continue
            if len(self._slot) < self.capacity:
                s = len(self._slot)
            else:
                s = int(np.argmin(self._slot_freq))
                if self._slot_freq[s] >= f:
                    continue
                del self._slot[int(self._slot_id[s])]
            self._slot[i] = s
            self._slot_id[s] = i
            self._slot_freq[s] = f
            self._vecs[s] = v
        if len(self._freq) > 2 * self.capacity + 1024:  # age: halve, keep the cached + the best
            aged = {i: f // 2 for i, f in self._freq.items()}
            rest = sorted((i for i in aged if i not in self._slot), key=aged.__getitem__,
                          reverse=True)[: self.capacity]
            self._freq = {i: aged[i] for i in rest} | {i: aged[i] for i in self._slot}
            self._slot_freq //= 2

    def discard(self, ids: np.ndarray) -> None:
        """Forget removed ids."""
        with self._lock:
            self._discard(ids)

    def _discard(self, ids: np.ndarray) -> None:
        for i in np.asarray(ids).tolist():
            self._freq.pop(i, None)
            s = self._slot.pop(i, None)
            if s is None:
                continue
            last = len(self._slot)  # move the last used slot into the hole
            if s != last:
                j = int(self._slot_id[last])
                self._slot[j] = s
                self._slot_id[s] = j
                self._slot_freq[s] = self._slot_freq[last]
                self._vecs[s] = self._vecs[last]
            self._slot_id[last] = -1
            self._slot_freq[last] = 0
