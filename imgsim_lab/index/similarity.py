"""`SimilarityIndex`: a memory-budgeted FAISS index over one model's vectors in the store."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from imgsim_lab.index import builders, decisions, tune
from imgsim_lab.index import snapshot as snap
from imgsim_lab.index.config import Hit, IndexConfig
from imgsim_lab.index.hotset import HotSet
from imgsim_lab.store import Store

log = logging.getLogger(__name__)

#: Budget mode needs this many vectors to train PCA and IVF; fewer are indexed exactly.
MIN_BUDGET_N = 64


def _normalized(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.array(x, dtype=np.float32, ndmin=2, copy=True)
    if x.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {x.shape}")
    faiss.normalize_L2(x)
    return x


class SimilarityIndex:
    """Cosine k-NN over the store's vectors of ``model_key``, exact or memory-budgeted.

    On creation it loads its snapshot (or builds from the store) and catches up with
    what the store gained or lost since. See ``docs/index.md`` for the design.
    """

    def __init__(self, store: Store, model_key: str, config: IndexConfig | None = None) -> None:
        self.store = store
        self.model = model_key
        self.config = config or IndexConfig()
        self.dim = store.model_dim(model_key)
        self.config = tune.config_for(store, model_key, self.config, self.dim)  # stored tuned setting
        self.directory = Path(self.config.snapshot_dir) if self.config.snapshot_dir else \
            snap.default_dir(self._store_identity(), store.namespace, model_key)
        self.index: faiss.Index = builders.new_exact(self.dim)
        self.mode = "exact"
        self.factory = "IDMap2,Flat"
        self.watermark = 0
        self.trained_n = 0
        self._ids = np.empty(0, np.int64)  # sorted ids held by the index
        self.hot = HotSet(0, self.dim)
        self.last_rebuild_s = 0.0
        self.last_rebuild_timings: dict[str, float] = {}
        self._dirty = False
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # last re-rank's ids and vectors
        if not self._load():
            self.rebuild()
        self.sync()
        if self._dirty and self.config.autosave:
            self.save()

    # ------------------------------------------------------------------ state
    def _store_identity(self) -> str:
        path = getattr(self.store, "path", None)
        if self.store.backend == "rocksdb" and path:
            return f"rocksdb:{Path(path).resolve()}"
        return self.store.url

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def _budget(self, n: int) -> int:
        return decisions.resolve_budget(self.config.memory_budget, n, self.dim)

    def _manifest(self) -> snap.Manifest:
        return snap.Manifest(model=self.model, dim=self.dim, mode=self.mode, factory=self.factory,
                             watermark=self.watermark, count=self.ntotal, trained_n=self.trained_n,
                             store_url=self._store_identity(), namespace=self.store.namespace,
                             config=self.config.fingerprint())

    def _load(self) -> bool:
        try:
            index, m = snap.load(self.directory)
            problems = []
            if (m.model, m.dim, m.namespace) != (self.model, self.dim, self.store.namespace):
                problems.append(f"built for {m.model}/{m.dim}/{m.namespace}")
            if m.config != self.config.fingerprint():
                problems.append(f"built with other settings {m.config}")
            if m.count != index.ntotal:
                problems.append(f"manifest count {m.count} != index ntotal {index.ntotal}")
            if m.watermark > self.store.last_id():
                problems.append(f"watermark {m.watermark} is ahead of the store ({self.store.last_id()})")
            if problems:
                raise snap.SnapshotError("stale snapshot: " + "; ".join(problems))
        except snap.SnapshotError as exc:
            level = logging.INFO if "no snapshot" in str(exc) else logging.WARNING
            log.log(level, "index %s/%s: %s; rebuilding from the store", self.store.namespace,
                    self.model, exc)
            return False
        self.index, self.mode, self.factory = index, m.mode, m.factory
        self.watermark, self.trained_n = m.watermark, m.trained_n
        self._ids = builders.index_ids(index)
        self._setup_search()
        log.info("index %s/%s: loaded snapshot (%s, %d vectors, watermark %d)", self.store.namespace,
                 self.model, self.factory, self.ntotal, self.watermark)
        return True

    def save(self) -> None:
        """Write the snapshot atomically (index file + manifest with its sha256)."""
        t = time.perf_counter()
        snap.save(self.directory, self.index, self._manifest())
        self._dirty = False
        log.info("index %s/%s: saved snapshot to %s in %.2fs", self.store.namespace, self.model,
                 self.directory, time.perf_counter() - t)

    def _setup_search(self) -> None:
        ivf = builders.ivf_of(self.index)
        if ivf is not None:
            ivf.nprobe = self.config.nprobe or decisions.nprobe_for(ivf.nlist)
            ivf.parallel_mode = 0
        self._resize_hot()

    def _resize_hot(self) -> None:
        if self.mode != "budget":
            self.hot = HotSet(0, self.dim)
            return
        budget = self._budget(self.ntotal)
        cap = decisions.hot_capacity(budget, self.index_bytes + self._ids.nbytes, self.dim,
                                     self.config.hot_fraction)
        if cap != self.hot.capacity:
            self.hot = self.hot.resized(cap)

    @property
    def index_bytes(self) -> int:
        return builders.index_bytes(self.index, self.mode, self.factory, self.ntotal, self.dim)

    # ---------------------------------------------------------------- building
    def rebuild(self) -> None:
        """Rebuild from the store: choose the mode, train on a sample (budget), add in chunks."""
        t0 = time.perf_counter()
        threads = faiss.omp_get_max_threads()
        # the reader thread needs a core: faiss gets the rest (OpenMP barriers stall when oversubscribed)
        faiss.omp_set_num_threads(self.config.build_threads or max(1, (os.cpu_count() or 2) - 1))
        chunks: builders.Prefetch | None = None
        timings: dict[str, float] = {}
        try:
            self.store.refresh()
            upto = self.store.last_id()
            n = self._model_count()
            budget = self._budget(n)
            self.mode = decisions.choose_mode(n, self.dim, budget, self.config.mode)
            if self.mode == "budget" and n < MIN_BUDGET_N:
                log.info("index %s/%s: %d vectors are too few to train a compressed index; exact "
                         "until there are %d", self.store.namespace, self.model, n, MIN_BUDGET_N)
                self.mode = "exact"
            if self.mode == "exact":
                self.factory = "IDMap2,Flat"
                index = builders.new_exact(self.dim)
                chunks = builders.Prefetch(self.store.iter_embeddings(self.model, 0, self.config.chunk_size))
            else:
                nlist = (decisions.factory_parts(self.config.factory)["nlist"] if self.config.factory
                         else None) or self.config.nlist or decisions.nlist_for(n)
                index_budget = int(budget * (1 - self.config.hot_fraction))
                size = decisions.training_size(n, nlist, self.config.train_min)
                sample = builders.sample_vectors(self.store, self.model, size, upto, n)
                timings["sample"] = time.perf_counter() - t0
                if len(sample) < nlist:
                    nlist = max(1, len(sample) // decisions.MIN_POINTS_PER_CENTROID)
                self.factory = self.config.factory or decisions.budget_factory(
                    n, self.dim, index_budget, nlist, self.config.max_pca_dim)
                # start reading now: the first chunks arrive while the index trains
                chunks = builders.Prefetch(self.store.iter_embeddings(self.model, 0, self.config.chunk_size))
                index = builders.new_budget(self.dim, self.factory, sample, self.config.kmeans_iter)
                timings["train"] = time.perf_counter() - t0 - timings["sample"]
            ids = builders.stream_into(index, chunks, upto, total=n, desc=f"index {self.model}")
        finally:
            faiss.omp_set_num_threads(threads)
            if chunks is not None:
                chunks.close()
        self.index, self.watermark, self.trained_n = index, upto, len(ids)
        self._ids = np.sort(ids)
        self._setup_search()
        self.last_rebuild_s = time.perf_counter() - t0
        self._dirty = True
        self.last_rebuild_timings = {**timings, "total": self.last_rebuild_s}
        tune.after_rebuild(self)  # once, for a default build of > 20k vectors (timed apart)
        log.info("index %s/%s: built %s over %d vectors in %.2fs (%.0f vectors/s; %s; budget %d bytes)",
                 self.store.namespace, self.model, self.factory, len(ids), self.last_rebuild_s,
                 len(ids) / max(self.last_rebuild_s, 1e-9),
                 ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()) or "no training", budget)
        if self.config.autosave:
            self.save()

    def _model_count(self) -> int:
        info = self.store.model_info().get(self.model)
        return 0 if info is None else info.count

    # ----------------------------------------------------------------- syncing
    def sync(self) -> int:
        """Catch up with the store: add ids past the watermark, drop deleted ones.

        Returns the number of vectors added. Rebuilds when the collection outgrew the
        trained index or the mode no longer fits the budget.
        """
        added = 0
        for _ in range(5):
            self.store.refresh()
            upto = self.store.last_id()
            if upto > self.watermark:
                chunks = self.store.iter_embeddings(self.model, self.watermark, self.config.chunk_size)
                ids = builders.stream_into(self.index, chunks, upto, desc=f"catch-up {self.model}",
                                           skip=self._ids)  # ids given to add() already
                added += len(ids)
                self._ids = np.union1d(self._ids, ids)
                self.watermark = upto
            count = self._model_count()
            if self.store.last_id() == upto:
                break
        else:  # a writer kept adding: the count is not comparable now, check next time
            log.debug("index %s/%s: store still growing; deletion check deferred",
                      self.store.namespace, self.model)
            count = self.ntotal
        if added:
            log.info("index %s/%s: caught up with %d new vectors (watermark %d)",
                     self.store.namespace, self.model, added, self.watermark)
            self._dirty = True
        if self.ntotal > count:
            self._drop_deleted()
        elif self.ntotal < count:
            log.warning("index %s/%s holds %d vectors but the store %d (embeddings added to old "
                        "images); rebuilding", self.store.namespace, self.model, self.ntotal, count)
            self.rebuild()
            return added
        n = self.ntotal
        wanted = decisions.choose_mode(n, self.dim, self._budget(n), self.config.mode)
        if wanted == "budget" and n < MIN_BUDGET_N:
            wanted = "exact"
        if wanted != self.mode:
            log.info("index %s/%s: %d vectors call for %s mode; rebuilding", self.store.namespace,
                     self.model, n, wanted)
            self.rebuild()
        elif self.mode == "budget" and decisions.needs_retrain(n, self.trained_n, self.config.retrain_growth):
            log.info("index %s/%s: grew from %d to %d vectors since training; retraining",
                     self.store.namespace, self.model, self.trained_n, n)
            self.rebuild()
        else:
            self._resize_hot()
        return added

    def _drop_deleted(self) -> None:
        present = np.concatenate([self.store.has_embeddings(self.model, self._ids[s : s + 10000])
                                  for s in range(0, len(self._ids), 10000)] or [np.zeros(0, bool)])
        gone = self._ids[~present]
        if len(gone):
            log.info("index %s/%s: %d vectors were deleted from the store", self.store.namespace,
                     self.model, len(gone))
            self.remove(gone)

    # ---------------------------------------------------------------- updating
    def add(self, ids: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under store ids; they are L2-normalized here."""
        ids = np.asarray(ids, np.int64).ravel()
        x = _normalized(vectors, self.dim)
        if len(ids) != len(x):
            raise ValueError(f"{len(ids)} ids for {len(x)} vectors")
        ids, first = np.unique(ids, return_index=True)
        x = x[first]
        old = ids[np.isin(ids, self._ids)]
        if len(old):
            self.index.remove_ids(faiss.IDSelectorBatch(old))
        self.index.add_with_ids(x, ids)
        self._ids = np.union1d(self._ids, ids)
        self._dirty = True

    def remove(self, ids: Iterable[int]) -> int:
        """Remove ids from the index (not from the store); returns how many were held."""
        ids = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64))
        held = ids[np.isin(ids, self._ids)]
        if not len(held):
            return 0
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(held)))
        self._ids = np.setdiff1d(self._ids, held, assume_unique=True)
        self.hot.discard(held)
        self._dirty = True
        return removed

    # -------------------------------------------------------------- searching
    def _exclusions(self, exclude_ids: Iterable[int], exclude_sha256: str | None) -> set[int]:
        excl = {int(i) for i in exclude_ids}
        if exclude_sha256:
            found = self.store.ids_for_hashes([exclude_sha256])[0]
            if found is not None:
                excl.add(int(found))
        return excl

    def _filter(self, ids: np.ndarray, scores: np.ndarray, excl: set[int], k: int) -> list[Hit]:
        """Sorted, unique hits without exclusions and exact duplicates of the query."""
        order = np.argsort(-scores, kind="stable")
        thr = self.config.duplicate_threshold
        dup_min = None if thr is None else 1.0 - thr
        seen: set[int] = set()
        hits: list[Hit] = []
        for i, s in zip(ids[order].tolist(), scores[order].tolist(), strict=True):
            if i < 0 or i in excl or i in seen or (dup_min is not None and s >= dup_min):
                continue
            seen.add(i)
            hits.append(Hit(i, float(s)))
            if len(hits) == k:
                break
        return hits

    def _rerank(self, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Full vectors of the candidates: hot ones from RAM, the rest in one store read."""
        cand = np.unique(cand[cand >= 0])
        mask, hot_vecs = self.hot.lookup(cand)
        cold = cand[~mask]
        found, cold_vecs = self.store.get_embeddings(self.model, cold) if len(cold) else \
            (cold, np.empty((0, self.dim), np.float32))
        ids = np.concatenate([cand[mask], found])
        vecs = np.concatenate([hot_vecs, cold_vecs]) if len(hot_vecs) else cold_vecs
        return ids, vecs

    def _probe(self, round_: int) -> tuple[int, int]:
        """``(nprobe, nlist)`` for a widening round."""
        ivf = builders.ivf_of(self.index)
        base = self.config.nprobe or decisions.nprobe_for(ivf.nlist)
        return min(ivf.nlist, base * 4 ** round_), ivf.nlist

    def _depth(self, k_fetch: int) -> int:
        depth = decisions.rerank_depth(k_fetch, self.config.rerank_factor, self.config.rerank_min)
        return min(depth, max(self.ntotal, 1))

    def _budget_candidates(self, q: np.ndarray, k_fetch: int, round_: int) -> tuple[np.ndarray, np.ndarray]:
        depth = self._depth(k_fetch)
        params = builders.search_params(self.index, self._probe(round_)[0])  # through OPQ/PCA wrappers
        d, c = self.index.search(q, depth, params=params)
        return d, c

    def search(self, query: np.ndarray, k: int = 5, exclude_ids: Iterable[int] = (),
               exclude_sha256: str | None = None) -> list[Hit]:
        """The ``k`` most similar stored vectors (cosine), best first, unique, filtered.

        Excluded: ``exclude_ids``, the image with sha256 ``exclude_sha256`` and vectors
        identical to the query (``duplicate_threshold``). Returns ``min(k, available)`` hits.
        """
        q = _normalized(query, self.dim)
        excl = self._exclusions(exclude_ids, exclude_sha256)
        if self.config.search_threads is None:
            return self._search_one(q, k, excl)
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.config.search_threads)
        try:
            return self._search_one(q, k, excl)
        finally:
            faiss.omp_set_num_threads(threads)

    def _search_one(self, q: np.ndarray, k: int, excl: set[int],
                    first: tuple[np.ndarray, np.ndarray] | None = None) -> list[Hit]:
        if k <= 0:
            return []
        k_fetch = decisions.k_plus(k, self.config.k_margin, len(excl))
        n = self.ntotal
        rounds = 0
        while n:
            k_fetch = min(k_fetch, n)
            if self.mode == "exact":
                d, c = first if first is not None else self.index.search(q, k_fetch)
                ids, scores = c[0], d[0]
                exhausted = k_fetch >= n
            else:
                d, c = first if first is not None else self._budget_candidates(q, k_fetch, rounds)
                ids, scores = self._rescore(q, c[0], d[0])
                nprobe, nlist = self._probe(rounds)
                exhausted = self._depth(k_fetch) >= n and nprobe >= nlist  # saw every vector
            first = None
            hits = self._filter(ids, scores, excl, k)
            if len(hits) >= k or exhausted:
                return self._record(hits)
            if self.mode == "budget" and rounds >= self.config.max_widen_rounds:
                break
            rounds += 1
            k_fetch = decisions.widen(k_fetch, n)
            log.debug("only %d of %d hits survived filtering; widening to %d", len(hits), k, k_fetch)
        return self._scan_store(q, k, excl)

    def _rescore(self, q: np.ndarray, cand: np.ndarray, approx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.config.rerank:
            self._last = None
            return cand, approx
        ids, vecs = self._rerank(cand)
        self._last = (ids, vecs)
        return ids, vecs @ q[0]

    def _record(self, hits: list[Hit]) -> list[Hit]:
        """Count the hits for the hot set (budget mode); frequent ones keep full vectors in RAM."""
        last, self._last = self._last, None
        if self.mode != "budget" or not self.hot.capacity or not hits or last is None:
            return hits
        ids, vecs = last
        want = np.array([h.id for h in hits], np.int64)
        pos = {i: r for r, i in enumerate(ids.tolist())}
        rows = [pos[i] for i in want.tolist() if i in pos]
        self.hot.record(ids[rows], vecs[rows])
        return hits

    def _scan_store(self, q: np.ndarray, k: int, excl: set[int]) -> list[Hit]:
        """Last resort: an exact scan of every stored vector, chunk by chunk."""
        log.info("index %s/%s: exact scan of the store for %d results", self.store.namespace,
                 self.model, k)
        thr = self.config.duplicate_threshold
        excl_arr = np.fromiter(excl, np.int64, len(excl))
        best_ids, best_sc = np.empty(0, np.int64), np.empty(0, np.float32)
        for ids, vecs in self.store.iter_embeddings(self.model, chunk_size=self.config.chunk_size):
            scores = vecs @ q[0]
            valid = ~np.isin(ids, excl_arr)
            if thr is not None:
                valid &= scores < 1.0 - thr
            ids = np.concatenate([best_ids, ids[valid]])
            scores = np.concatenate([best_sc, scores[valid]])
            if len(ids) > k:
                top = np.argpartition(-scores, k - 1)[:k]
                ids, scores = ids[top], scores[top]
            best_ids, best_sc = ids, scores
        return self._filter(best_ids, best_sc, excl, k)

    def search_batch(self, queries: np.ndarray, k: int = 5,
                     exclude_ids_per_query: Sequence[Iterable[int]] | None = None) -> list[list[Hit]]:
        """:meth:`search` for many queries with one faiss call (and one store read in budget mode)."""
        qs = _normalized(queries, self.dim)
        excls = [set() for _ in range(len(qs))] if exclude_ids_per_query is None else \
            [{int(i) for i in e} for e in exclude_ids_per_query]
        if len(excls) != len(qs):
            raise ValueError(f"{len(excls)} exclusion lists for {len(qs)} queries")
        if not len(qs) or not self.ntotal:
            return [[] for _ in qs]
        k_fetch = min(decisions.k_plus(k, self.config.k_margin, max(map(len, excls))), self.ntotal)
        if self.mode == "exact" or not self.config.rerank:
            d, c = self.index.search(qs, k_fetch) if self.mode == "exact" else \
                self._budget_candidates(qs, k_fetch, 0)
            return [self._search_one(qs[i : i + 1], k, excls[i], (d[i : i + 1], c[i : i + 1]))
                    for i in range(len(qs))]
        _, c = self._budget_candidates(qs, k_fetch, 0)
        ids, vecs = self._rerank(c.ravel())  # one store read for every query's candidates
        order = np.argsort(ids)
        ids, vecs = ids[order], vecs[order]
        out = []
        for i in range(len(qs)):
            cand = np.unique(c[i][c[i] >= 0])
            pos = np.searchsorted(ids, cand)
            pos = pos[(pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == cand)]
            hits = self._filter(ids[pos], vecs[pos] @ qs[i], excls[i], k)
            if len(hits) < k:
                hits = self._search_one(qs[i : i + 1], k, excls[i])
            else:
                self._last = (ids[pos], vecs[pos])
                self._record(hits)
            out.append(hits)
        return out

    # ------------------------------------------------------------------ report
    def stats(self) -> dict[str, Any]:
        """Mode, size and memory figures, hot-set hit rate, watermark and factory."""
        n = self.ntotal
        return {
            "mode": self.mode,
            "ntotal": n,
            "dim": self.dim,
            "index_bytes": self.index_bytes,
            "hot_bytes": self.hot.nbytes if self.hot.capacity else 0,
            "ids_bytes": int(self._ids.nbytes),
            "raw_vector_bytes": decisions.raw_vector_bytes(n, self.dim),
            "budget_bytes": self._budget(n),
            "hot_capacity": self.hot.capacity,
            "hot_size": len(self.hot),
            "hot_hit_rate": self.hot.hit_rate,
            "watermark": self.watermark,
            "trained_n": self.trained_n,
            "factory": self.factory,
            "nprobe": getattr(builders.ivf_of(self.index), "nprobe", None),
            "snapshot_dir": str(self.directory),
            "last_rebuild_s": self.last_rebuild_s,
        }

    def __repr__(self) -> str:
        return f"<SimilarityIndex {self.model} {self.mode} {self.factory} n={self.ntotal}>"
