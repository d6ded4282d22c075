"""`SimilarityIndex`: a memory-budgeted FAISS index over one model's vectors in the store.

Concurrency: what a search reads is one :class:`IndexState` (faiss index, ids, mode,
factory, watermark, epoch). A rebuild builds a new state aside and swaps it
in with one assignment, so a failed rebuild leaves the old state serving. Catch-up,
:meth:`SimilarityIndex.add` and :meth:`SimilarityIndex.remove` change the current
faiss index in place under the write side of a reader-writer lock, whose read side
every faiss search holds. One update (sync, rebuild, add, remove, save) runs at a time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from imgsim_lab.index import builders, decisions, plan, qcache, tune
from imgsim_lab.index import snapshot as snap
from imgsim_lab.index.config import Hit, IndexConfig
from imgsim_lab.index.plan import IndexFacts, Step, StoreFacts
from imgsim_lab.index.rwlock import RWLock
from imgsim_lab.pipeline import Prefetched, prefetch
from imgsim_lab.store import Store

log = logging.getLogger(__name__)

#: Budget mode needs this many vectors to train PCA and IVF; fewer are indexed exactly.
MIN_BUDGET_N = plan.MIN_BUDGET_N
EXACT_FACTORY = "IDMap2,Flat"

_threads_lock = threading.Lock()
_threads: list[int] = []


def configure_threads(n: int | None = None) -> int:
    """Set faiss' OpenMP threads once per process (the setting is process-wide); returns it.

    The first call decides (``n``, else cores - 1: a store reader thread needs a core);
    later calls keep that value, so no search or rebuild ever toggles it.
    """
    with _threads_lock:
        if not _threads:
            want = int(n or max(1, (os.cpu_count() or 2) - 1))
            faiss.omp_set_num_threads(want)
            _threads.append(want)
            log.debug("faiss uses %d OpenMP threads in this process", want)
        return _threads[0]


def _normalized(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.array(x, dtype=np.float32, ndmin=2, copy=True)
    if x.shape[1] != dim:
        raise ValueError(f"expected vectors of dimension {dim}, got shape {x.shape}")
    faiss.normalize_L2(x)
    return x


@dataclass(frozen=True)
class IndexState:
    """Everything a search reads, replaced as a whole.

    Only :class:`SimilarityIndex` changes ``index`` in place (incremental add/remove,
    under its write lock), and then publishes a new state with the matching ids.
    """

    index: faiss.Index
    ids: np.ndarray          # sorted ids held by the index
    mode: str                # "exact" | "budget"
    factory: str
    watermark: int           # every store id <= this was considered
    trained_n: int           # vectors at the last (re)build
    epoch: str | None        # the store epoch it was built from

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


def _empty_state(dim: int) -> IndexState:
    return IndexState(builders.new_exact(dim), np.empty(0, np.int64), "exact", EXACT_FACTORY, 0, 0, None)


class SimilarityIndex:
    """Cosine k-NN over the store's vectors of ``model_key``, exact or memory-budgeted.

    On creation it loads its snapshot (or builds from the store) and catches up with
    what the store gained or lost since. Safe to search from many threads while one
    of them syncs. See ``docs/index.md`` for the design.
    """

    def __init__(self, store: Store, model_key: str, config: IndexConfig | None = None) -> None:
        self.store = store
        self.model = model_key
        self.config = config or IndexConfig()
        self.dim = store.model_dim(model_key)
        self.config = tune.config_for(store, model_key, self.config, self.dim)  # stored tuned setting
        self.directory = Path(self.config.snapshot_dir) if self.config.snapshot_dir else \
            snap.default_dir(snap.store_identity(store), store.namespace, model_key)
        configure_threads(self.config.build_threads)
        self._rw = RWLock()                # read: a faiss search; write: an in-place index change
        self._update = threading.RLock()   # one update at a time
        self._state = _empty_state(self.dim)
        self.query_cache = qcache.QueryCache(self.config.query_cache)  # per state: any change drops it
        self.last_rebuild_s = 0.0
        self.last_rebuild_timings: dict[str, float] = {}
        self.rebuilds = 0                  # full rebuilds by this object (a sync should rarely need one)
        self._dirty = False
        # (store watermark, count) at the last rebuild that still fell short of the store's count
        self._count_rebuild: tuple[int, int] | None = None
        with self._update:
            if not self._load():
                self.rebuild()
            self.sync()
            if self._dirty and self.config.autosave:
                self.save()

    # ------------------------------------------------------------------ state
    @property
    def state(self) -> IndexState:
        """The state searches read now (replaced, never half-changed, by updates)."""
        return self._state

    @property
    def index(self) -> faiss.Index:
        return self._state.index

    @property
    def mode(self) -> str:
        return self._state.mode

    @property
    def factory(self) -> str:
        return self._state.factory

    @property
    def watermark(self) -> int:
        return self._state.watermark

    @property
    def trained_n(self) -> int:
        return self._state.trained_n

    @property
    def ntotal(self) -> int:
        return self._state.ntotal

    @property
    def index_bytes(self) -> int:
        return self._index_bytes(self._state)

    def _index_bytes(self, st: IndexState) -> int:
        return builders.index_bytes(st.index, st.mode, st.factory, st.ntotal, self.dim)

    def _budget(self, n: int) -> int:
        return decisions.resolve_budget(self.config.memory_budget, n, self.dim)

    def _facts(self, st: IndexState) -> IndexFacts:
        return IndexFacts(st.epoch, st.watermark, st.ntotal, st.mode, st.trained_n)

    def _store_watermark(self) -> int:
        """The store's id watermark: ids up to it are listed (the one place sync asks for it)."""
        return self.store.last_id()

    def _model_count(self) -> int:
        info = self.store.model_info().get(self.model)
        return 0 if info is None else info.count

    def _publish(self, st: IndexState) -> None:
        self._state = st  # one assignment: searches see the old state or the new one

    def _manifest(self, st: IndexState) -> snap.Manifest:
        return snap.Manifest(model=self.model, dim=self.dim, mode=st.mode, factory=st.factory,
                             watermark=st.watermark, count=st.ntotal, trained_n=st.trained_n,
                             store_url=snap.store_identity(self.store), namespace=self.store.namespace,
                             config=self.config.fingerprint(), epoch=st.epoch,
                             sample=snap.sample_digests(self.store, self.model, st.ids))

    def _load(self) -> bool:
        try:
            index, m = snap.load(self.directory)
            problems = []
            if (m.model, m.dim, m.namespace) != (self.model, self.dim, self.store.namespace):
                problems.append(f"built for {m.model}/{m.dim}/{m.namespace}")
            if not self.config.fingerprint_matches(m.config):
                problems.append(f"built with other settings {m.config}")
            if m.count != index.ntotal:
                problems.append(f"manifest count {m.count} != index ntotal {index.ntotal}")
            self.store.refresh()
            epoch = self.store.epoch()
            if m.epoch != epoch:
                problems.append(f"built from namespace epoch {m.epoch}, which is now {epoch} "
                                "(flushed and written again since)")
            upto = self._store_watermark()
            if m.watermark > upto:
                problems.append(f"watermark {m.watermark} is ahead of the store ({upto})")
            if not problems and (bad := snap.check_sample(self.store, self.model, m.sample)):
                problems.append(bad)
            if problems:
                raise snap.SnapshotError("stale snapshot: " + "; ".join(problems))
        except snap.SnapshotError as exc:
            level = logging.INFO if "no snapshot" in str(exc) else logging.WARNING
            log.log(level, "index %s/%s: %s; rebuilding from the store", self.store.namespace,
                    self.model, exc)
            return False
        self._setup_search(index)
        self._publish(IndexState(index, builders.index_ids(index), m.mode, m.factory, m.watermark,
                                 m.trained_n, m.epoch))
        log.info("index %s/%s: loaded snapshot (%s, %d vectors, watermark %d)", self.store.namespace,
                 self.model, m.factory, index.ntotal, m.watermark)
        return True

    def save(self) -> None:
        """Write the snapshot atomically (index file + manifest with its sha256 and vector sample)."""
        with self._update:  # no in-place change while faiss writes the file
            t = time.perf_counter()
            st = self._state
            snap.save(self.directory, st.index, self._manifest(st))
            self._dirty = False
        log.info("index %s/%s: saved snapshot to %s in %.2fs", self.store.namespace, self.model,
                 self.directory, time.perf_counter() - t)

    def _setup_search(self, index: faiss.Index) -> None:
        """Search parameters of a new index, set before it is published."""
        ivf = builders.ivf_of(index)
        if ivf is not None:
            ivf.nprobe = self.config.nprobe or decisions.nprobe_for(ivf.nlist)
            ivf.parallel_mode = 0

    # ---------------------------------------------------------------- building
    def rebuild(self) -> None:
        """Rebuild from the store aside, then swap it in; on error the old state keeps serving."""
        with self._update:
            st = self._build()
            self._publish(st)
            self.rebuilds += 1
            self._dirty = True
            tune.after_rebuild(self)  # once, for a default build of > 20k vectors (timed apart)
            if self.config.autosave:
                self.save()

    def _read_ahead(self, chunk: int) -> Prefetched:
        """Every stored vector of the model, read on a background thread while the caller trains."""
        return prefetch(self.store.iter_embeddings(self.model, 0, chunk), 4, name="index-prefetch")

    def _build(self) -> IndexState:
        """A new state from the store: choose the mode, train on a sample (budget), add in chunks."""
        t0 = time.perf_counter()
        chunks: Prefetched | None = None
        timings: dict[str, float] = {}
        try:
            self.store.refresh()
            epoch = self.store.epoch()
            upto = self._store_watermark()
            n = self._model_count()
            budget = self._budget(n)
            chunk = self.config.chunk_size
            mode = plan.target_mode(n, self.dim, budget, self.config.mode)
            if mode != decisions.choose_mode(n, self.dim, budget, self.config.mode):
                log.info("index %s/%s: %d vectors are too few to train a compressed index; exact "
                         "until there are %d", self.store.namespace, self.model, n, MIN_BUDGET_N)
            if mode == "exact":
                factory = EXACT_FACTORY
                index = builders.new_exact(self.dim)
                if n:  # none (or the model is gone with a flush): nothing to read
                    chunks = self._read_ahead(chunk)
            else:
                nlist = (decisions.factory_parts(self.config.factory)["nlist"] if self.config.factory
                         else None) or self.config.nlist or decisions.nlist_for(n)
                size = decisions.sample_size(self.config.factory, n, nlist, self.config.train_min)
                sample = builders.sample_vectors(self.store, self.model, size, upto, n)
                timings["sample"] = time.perf_counter() - t0
                if len(sample) < nlist:
                    nlist = max(1, len(sample) // decisions.MIN_POINTS_PER_CENTROID)
                factory = self.config.factory or decisions.budget_factory(
                    n, self.dim, budget, nlist, self.config.max_pca_dim)
                # start reading now: the first chunks arrive while the index trains
                chunks = self._read_ahead(chunk)
                index = builders.new_budget(self.dim, factory, sample, self.config.kmeans_iter)
                timings["train"] = time.perf_counter() - t0 - timings["sample"]
            t_stream = time.perf_counter()
            ids = builders.fill(index, chunks, upto, total=n, desc=f"index {self.model}",
                                timings=timings) if chunks is not None else np.empty(0, np.int64)
            timings["stream"] = time.perf_counter() - t_stream  # read_wait + add when they overlap
        finally:
            if chunks is not None:
                chunks.close()
        self._setup_search(index)
        self.last_rebuild_s = time.perf_counter() - t0
        self.last_rebuild_timings = {**timings, "total": self.last_rebuild_s}
        log.info("index %s/%s: built %s over %d vectors in %.2fs (%.0f vectors/s; %s; budget %d bytes)",
                 self.store.namespace, self.model, factory, len(ids), self.last_rebuild_s,
                 len(ids) / max(self.last_rebuild_s, 1e-9),
                 ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()) or "no training", budget)
        return IndexState(index, np.sort(ids), mode, factory, upto, len(ids), epoch)

    # ----------------------------------------------------------------- syncing
    def sync(self, wait: bool = True) -> int:
        """Catch up with the store: add ids past the watermark, drop deleted ones.

        Returns the number of vectors added. Rebuilds when the namespace was flushed,
        the collection outgrew the trained index or the mode no longer fits the budget.
        With ``wait=False`` it returns 0 at once when another thread is updating.
        """
        if not self._update.acquire(blocking=wait):
            return 0
        try:
            return self._sync()
        finally:
            self._update.release()

    def _sync(self) -> int:
        added = 0
        count: int | None = None
        for _ in range(5):
            self.store.refresh()
            now = StoreFacts(self.store.epoch(), self._store_watermark(), None)
            step = plan.plan_catch_up(self._facts(self._state), now)
            if step.step is Step.REBUILD:
                log.warning("index %s/%s: %s; rebuilding", self.store.namespace, self.model, step.reason)
                self.rebuild()
                self._note_disagreement(self.store.embedding_count(self.model, now.watermark),
                                        now.watermark)
                return added
            if step.step is Step.CATCH_UP:
                added += self._catch_up(now.watermark)
            # ids past the watermark may be listed already (a lower reservation in flight):
            # count up to it, as the index holds
            count = self.store.embedding_count(self.model, now.watermark)
            if self._store_watermark() == now.watermark:
                break
        else:  # a writer kept adding: the count is not comparable now, check next time
            log.debug("index %s/%s: store still growing; deletion check deferred",
                      self.store.namespace, self.model)
            count = None
        if added:
            log.info("index %s/%s: caught up with %d new vectors (watermark %d)",
                     self.store.namespace, self.model, added, self._state.watermark)
            self._dirty = True
        for _ in range(3):
            st = self._state
            wanted = plan.target_mode(st.ntotal, self.dim, self._budget(st.ntotal), self.config.mode)
            step = plan.plan_reshape(self._facts(st), count, wanted, self.config.retrain_growth,
                                     self._count_rebuild == (now.watermark, count))
            if step.step is Step.DROP_DELETED:
                self._drop_deleted()
                if self._state.ntotal > count:  # none found gone: the count moved meanwhile
                    count = None
                continue
            if step.step is Step.REBUILD:
                log.info("index %s/%s: %s; rebuilding", self.store.namespace, self.model, step.reason)
                self.rebuild()
                self._note_disagreement(count, now.watermark)
            break
        return added

    def _note_disagreement(self, count: int | None, watermark: int) -> None:
        """After a rebuild: a store that counts more than it lists is rebuilt once, not every sync."""
        if count is not None and self._state.ntotal < count:  # the store disagrees with itself
            log.warning("index %s/%s: the store counts %d vectors but lists %d up to id %d; "
                        "not rebuilding again until it changes", self.store.namespace,
                        self.model, count, self._state.ntotal, watermark)
            self._count_rebuild = (watermark, count)

    def _catch_up(self, upto: int) -> int:
        """Add the vectors with watermark < id <= ``upto``; the watermark moves chunk by chunk.

        A store error part-way leaves a consistent state (ids and watermark match what
        was added), so the next sync continues where this one stopped.
        """
        st = self._state
        if self.model not in self.store.model_info():  # flushed, then written without this model
            self._publish(replace(st, watermark=max(st.watermark, upto)))
            return 0
        added = 0
        start = st.watermark
        todo = upto - start
        with tqdm(total=todo, desc=f"catch-up {self.model}", unit="id", leave=False,
                  disable=todo < 65536) as bar:
            for ids, vecs in self.store.iter_embeddings(self.model, st.watermark, self.config.chunk_size):
                keep = ids <= upto
                last = upto if not keep.all() else int(ids[-1])
                keep &= ~np.isin(ids, st.ids)  # given to add() already
                new_ids, new_vecs = ids[keep], np.ascontiguousarray(vecs[keep])
                with self._rw.write():
                    if len(new_ids):
                        st.index.add_with_ids(new_vecs, new_ids)
                    st = replace(st, ids=np.union1d(st.ids, new_ids) if len(new_ids) else st.ids,
                                 watermark=max(st.watermark, last))
                    self._publish(st)
                added += len(new_ids)
                bar.update(last - start - bar.n)
                if last >= upto:
                    break
        self._publish(replace(self._state, watermark=max(self._state.watermark, upto)))
        return added

    def _drop_deleted(self) -> None:
        ids = self._state.ids
        present = np.concatenate([self.store.has_embeddings(self.model, ids[s : s + 10000])
                                  for s in range(0, len(ids), 10000)] or [np.zeros(0, bool)])
        gone = ids[~present]
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
        with self._update:
            st = self._state
            old = ids[np.isin(ids, st.ids)]
            with self._rw.write():
                if len(old):
                    st.index.remove_ids(faiss.IDSelectorBatch(old))
                st.index.add_with_ids(x, ids)
                self._publish(replace(st, ids=np.union1d(st.ids, ids)))
            self._dirty = True

    def remove(self, ids: Iterable[int]) -> int:
        """Remove ids from the index (not from the store); returns how many were held."""
        ids = np.unique(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, np.int64))
        with self._update:
            st = self._state
            held = ids[np.isin(ids, st.ids)]
            if not len(held):
                return 0
            with self._rw.write():
                removed = int(st.index.remove_ids(faiss.IDSelectorBatch(held)))
                self._publish(replace(st, ids=np.setdiff1d(st.ids, held, assume_unique=True)))
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
        """Full vectors of the candidates, in one store read (ids the store lost are dropped)."""
        cand = np.unique(cand[cand >= 0])
        if not len(cand):
            return cand, np.empty((0, self.dim), np.float32)
        return self.store.get_embeddings(self.model, cand)

    def _probe(self, st: IndexState, round_: int) -> tuple[int, int]:
        """``(nprobe, nlist)`` for a widening round."""
        ivf = builders.ivf_of(st.index)
        if ivf is None:  # a flat scan sees every code (a graph widens with the depth alone)
            probe = self.config.nprobe or 1
            return probe, probe
        base = self.config.nprobe or decisions.nprobe_for(ivf.nlist)
        return min(ivf.nlist, base * 4 ** round_), ivf.nlist

    def _depth(self, st: IndexState, k_fetch: int) -> int:
        depth = decisions.rerank_depth(k_fetch, self.config.rerank_factor, self.config.rerank_min)
        return min(depth, max(st.ntotal, 1))

    def _exact_candidates(self, st: IndexState, q: np.ndarray, k_fetch: int) -> tuple[np.ndarray, np.ndarray]:
        with self._rw.read():
            return st.index.search(q, k_fetch)

    def _budget_candidates(self, st: IndexState, q: np.ndarray, k_fetch: int,
                           round_: int) -> tuple[np.ndarray, np.ndarray]:
        depth = self._depth(st, k_fetch)
        params = builders.search_params(st.index, self._probe(st, round_)[0])  # through OPQ/PCA wrappers
        with self._rw.read():
            return st.index.search(q, depth, params=params)

    def search(self, query: np.ndarray, k: int = 5, exclude_ids: Iterable[int] = (),
               exclude_sha256: str | None = None, *, cache: bool = True) -> list[Hit]:
        """The ``k`` most similar stored vectors (cosine), best first, unique, filtered.

        Excluded: ``exclude_ids``, the image with sha256 ``exclude_sha256`` and vectors
        identical to the query (``duplicate_threshold``). Returns ``min(k, available)`` hits.
        A repeated identical query on an unchanged index is answered from the query cache
        (``IndexConfig.query_cache`` entries); ``cache=False`` bypasses it.
        """
        q = _normalized(query, self.dim)
        excl = self._exclusions(exclude_ids, exclude_sha256)
        st = self._state
        if not cache or not self.query_cache.capacity:
            return self._search_one(st, q, k, excl)
        key = qcache.query_key(q, k, excl, self.config)  # the config: nprobe and depth may be retuned
        hits = self.query_cache.get(st, key)
        if hits is None:
            hits = self._search_one(st, q, k, excl)
            self.query_cache.put(st, key, hits)
        return hits

    def _search_one(self, st: IndexState, q: np.ndarray, k: int, excl: set[int],
                    first: tuple[np.ndarray, np.ndarray] | None = None) -> list[Hit]:
        if k <= 0:
            return []
        k_fetch = decisions.k_plus(k, self.config.k_margin, len(excl))
        n = st.ntotal
        rounds = 0
        while n:
            k_fetch = min(k_fetch, n)
            if st.mode == "exact":
                d, c = first if first is not None else self._exact_candidates(st, q, k_fetch)
                ids, scores = c[0], d[0]
                exhausted = k_fetch >= n
            else:
                d, c = first if first is not None else self._budget_candidates(st, q, k_fetch, rounds)
                ids, scores = c[0], d[0]
                if self.config.rerank:  # exact cosines from full vectors
                    ids, vecs = self._rerank(ids)
                    scores = vecs @ q[0]
                nprobe, nlist = self._probe(st, rounds)
                exhausted = self._depth(st, k_fetch) >= n and nprobe >= nlist  # saw every vector
            first = None
            hits = self._filter(ids, scores, excl, k)
            if len(hits) >= k or exhausted:
                return hits
            if st.mode == "budget" and rounds >= self.config.max_widen_rounds:
                break
            rounds += 1
            k_fetch = decisions.widen(k_fetch, n)
            log.debug("only %d of %d hits survived filtering; widening to %d", len(hits), k, k_fetch)
        return self._scan_store(q, k, excl)

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
        st = self._state
        if not len(qs) or not st.ntotal:
            return [[] for _ in qs]
        k_fetch = min(decisions.k_plus(k, self.config.k_margin, max(map(len, excls))), st.ntotal)
        if st.mode == "exact" or not self.config.rerank:
            d, c = self._exact_candidates(st, qs, k_fetch) if st.mode == "exact" else \
                self._budget_candidates(st, qs, k_fetch, 0)
            return [self._search_one(st, qs[i : i + 1], k, excls[i], (d[i : i + 1], c[i : i + 1]))
                    for i in range(len(qs))]
        _, c = self._budget_candidates(st, qs, k_fetch, 0)
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
                hits = self._search_one(st, qs[i : i + 1], k, excls[i])
            out.append(hits)
        return out

    # ------------------------------------------------------------------ report
    def stats(self) -> dict[str, Any]:
        """Mode, size and memory figures, watermark, factory and the query cache's counters."""
        st = self._state
        n = st.ntotal
        return {
            "mode": st.mode,
            "ntotal": n,
            "dim": self.dim,
            "index_bytes": self._index_bytes(st),
            "ids_bytes": int(st.ids.nbytes),
            "raw_vector_bytes": decisions.raw_vector_bytes(n, self.dim),
            "budget_bytes": self._budget(n),
            "watermark": st.watermark,
            "trained_n": st.trained_n,
            "epoch": st.epoch,
            "factory": st.factory,
            "nprobe": getattr(builders.ivf_of(st.index), "nprobe", None),
            "snapshot_dir": str(self.directory),
            "last_rebuild_s": self.last_rebuild_s,
            "rebuilds": self.rebuilds,
            "query_cache": self.query_cache.stats(),
        }

    def __repr__(self) -> str:
        st = self._state
        return f"<SimilarityIndex {self.model} {st.mode} {st.factory} n={st.ntotal}>"
