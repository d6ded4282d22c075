"""Tune the budget index to a recall target on the collection's own vectors (autofaiss style).

A tune holds out a sample of stored vectors as queries (each excluding itself), computes
their exact neighbours, builds each candidate compressed index from the store, and
measures recall@10 after the exact re-rank for every (nprobe or efSearch, re-rank depth),
then times single queries on the cheapest settings that meet the target, through the same
path a search takes (faiss on one thread, one batched store read, exact scores), each next to
bare exact queries of the same minute. Among the settings meeting the target, those safely
under the latency target build-fastest wins, else the lowest p50 over exact
(:func:`~imgsim_lab.index.decisions.pick_setting`); it is stored *in the store* under
``<ns>:index:tuned:<model>`` as JSON (backend-neutral, shared by every process), where
:class:`~imgsim_lab.index.SimilarityIndex` picks it up (:func:`apply_setting`).

The decision rules (candidates, frontier, pick) are pure functions in
:mod:`imgsim_lab.index.decisions`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

from imgsim_lab.index import builders, decisions
from imgsim_lab.index.config import IndexConfig
from imgsim_lab.pipeline import prefetch
from imgsim_lab.store import Store

log = logging.getLogger(__name__)

K = 10
FORMAT = 1
#: Hold all vectors in RAM for the tune's re-rank when they take at most this many bytes.
IN_RAM_BYTES = 3 << 30


@contextlib.contextmanager
def faiss_threads(n: int | None = None) -> Iterator[None]:
    """faiss on ``n`` threads (default cores - 1: 1 on 2 cores) for the duration.

    On a loaded 2-core machine OpenMP barriers made faiss 10-50x slower at 2 threads than at 1.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n or max(1, (os.cpu_count() or 2) - 1))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def setting_key(namespace: str, model: str) -> str:
    """The store key of a model's tuned setting."""
    return f"{namespace}:index:tuned:{model}"


@dataclass(frozen=True)
class TunedSetting:
    """What a tune chose: the factory, its probe (nprobe or efSearch) and the re-rank depth
    for a k=10 query, with what it measured."""

    model: str
    dim: int
    n: int
    factory: str
    probe: int
    rerank_depth: int
    target_recall: float
    recall_at_10: float
    p50_ms: float
    p95_ms: float
    meets_target: bool
    memory_budget: float | int | None
    budget_bytes: int
    queries: int
    quick: bool = False
    created: float = field(default_factory=time.time)
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str) -> TunedSetting:
        """Parse and validate a stored setting (raises ``ValueError`` naming the problem)."""
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"tuned setting is not JSON: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ValueError(f"tuned setting has an unknown format: {str(obj)[:80]}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = names - set(obj) - {"created", "quick", "format"}
        if missing:
            raise ValueError(f"tuned setting lacks {sorted(missing)}")
        s = cls(**{k: obj[k] for k in names if k in obj})
        decisions.factory_parts(s.factory)  # raises ValueError on a foreign factory
        if not (isinstance(s.probe, int) and s.probe > 0 and isinstance(s.rerank_depth, int)
                and s.rerank_depth > 0 and isinstance(s.dim, int)):
            raise ValueError(f"tuned setting has bad probe/depth/dim: {s}")
        return s


def save_setting(store: Store, setting: TunedSetting) -> None:
    store.raw_set(setting_key(store.namespace, setting.model), setting.to_json())


def load_setting(store: Store, model: str) -> TunedSetting | None:
    """The stored setting of ``model``, or ``None`` (absent or unreadable: logged)."""
    raw = store.raw_get([setting_key(store.namespace, model)])[0]
    if raw is None:
        return None
    try:
        return TunedSetting.from_json(raw)
    except ValueError as exc:
        log.warning("ignoring the tuned setting of %s/%s: %s", store.namespace, model, exc)
        return None


def apply_setting(config: IndexConfig, setting: TunedSetting | None, n: int, dim: int) -> IndexConfig:
    """``config`` with the tuned factory, probe and re-rank depth, when they apply.

    They apply when ``config.tuned`` is on, no factory is forced, the setting is for this
    dimension and its index still fits the budget; an explicit ``config.nprobe`` is kept.
    """
    if setting is None or not config.tuned or config.factory is not None or setting.dim != dim:
        return config
    budget = decisions.resolve_budget(config.memory_budget, n, dim)
    if not decisions.setting_fits(setting.factory, n, dim, budget):
        log.info("tuned factory %s does not fit the budget of %d bytes at n=%d; not used",
                 setting.factory, budget, n)
        return config
    rmin, rfac = decisions.rerank_for(setting.rerank_depth, K, config.k_margin)
    return dataclasses.replace(config, factory=setting.factory,
                               nprobe=config.nprobe or setting.probe,
                               rerank_min=rmin, rerank_factor=rfac)


# ------------------------------------------------------------------ measuring
@dataclass
class HeldOut:
    """Query vectors (stored ones) with their exact top-``K`` neighbour ids, self excluded."""

    ids: np.ndarray
    x: np.ndarray
    truth: np.ndarray  # (q, K) ids


class Vectors:
    """Exact vectors by id for the tune's re-rank: all in RAM when small, else store reads."""

    def __init__(self, store: Store, model: str, ids: np.ndarray | None = None,
                 x: np.ndarray | None = None) -> None:
        self.store, self.model = store, model
        self.ids, self.x = ids, x

    def get(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.unique(ids[ids >= 0])
        if self.x is None:
            return self.store.get_embeddings(self.model, ids)
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, len(self.ids) - 1)
        ok = self.ids[pos] == ids
        return ids[ok], self.x[pos[ok]]


def load_all(store: Store, model: str, chunk_size: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    ids, vecs = [], []
    for i, v in store.iter_embeddings(model, chunk_size=chunk_size):
        ids.append(i)
        vecs.append(v)
    dim = store.model_dim(model)
    return (np.concatenate(ids), np.concatenate(vecs)) if ids else \
        (np.empty(0, np.int64), np.empty((0, dim), np.float32))


def exact_truth(q: np.ndarray, qids: np.ndarray, chunks, k: int = K) -> np.ndarray:
    """Exact top-``k`` ids of each query over streamed ``(ids, vectors)`` chunks, self excluded."""
    best_d = np.full((len(q), k + 1), -np.inf, np.float32)
    best_i = np.full((len(q), k + 1), -1, np.int64)
    for ids, vecs in chunks:
        d, i = faiss.knn(q, vecs, min(k + 1, len(vecs)), metric=faiss.METRIC_INNER_PRODUCT)
        i = np.where(i >= 0, ids[np.maximum(i, 0)], -1)
        d = np.where(i == qids[:, None], -np.inf, d)  # never the query itself
        cd, ci = np.hstack([best_d, d]), np.hstack([best_i, i])
        top = np.argsort(-cd, axis=1, kind="stable")[:, : k + 1]
        best_d, best_i = np.take_along_axis(cd, top, 1), np.take_along_axis(ci, top, 1)
    return best_i[:, :k]


def held_out(store: Store, model: str, n_queries: int, seed: int,
             vectors: Vectors | None = None) -> HeldOut:
    """``n_queries`` random stored vectors and their exact neighbours (one pass over the store)."""
    if vectors is not None and vectors.x is not None:
        ids_all, x = vectors.ids, vectors.x
        rows = np.random.default_rng(seed).choice(len(ids_all), min(n_queries, len(ids_all)), replace=False)
        qids, q = ids_all[rows], x[rows]
        truth = exact_truth(q, qids, [(ids_all, x)])
        return HeldOut(qids, q, truth)
    all_ids = store.all_ids()
    have = store.has_embeddings(model, all_ids)
    all_ids = all_ids[have]
    qids = np.sort(np.random.default_rng(seed).choice(all_ids, min(n_queries, len(all_ids)), replace=False))
    qids, q = store.get_embeddings(model, qids)
    truth = exact_truth(q, qids, prefetch(store.iter_embeddings(model, 0, 16384), 4, name="index-prefetch"))
    return HeldOut(qids, q, truth)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(set(f.tolist()) & set(t[t >= 0].tolist())) / max((t >= 0).sum(), 1)
            for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def recall_grid(index: faiss.Index, probes: list[int], depths: list[int], ho: HeldOut,
                vectors: Vectors) -> dict[tuple[int, int], float]:
    """recall@10 after the exact re-rank for every ``(probe, depth)``.

    One search per probe at the largest depth; its first ``depth`` candidates are what a
    search of that depth re-ranks (the query itself among them, then excluded).
    """
    out: dict[tuple[int, int], float] = {}
    dmax = max(depths)
    for p in probes:
        _, cand = index.search(ho.x, dmax, params=builders.search_params(index, p))
        scores = np.full(cand.shape, -np.inf, np.float32)
        for i in range(len(cand)):
            c = cand[i]
            ids, vecs = vectors.get(c)
            pos = np.searchsorted(ids, c)
            pos = np.minimum(pos, max(len(ids) - 1, 0))
            ok = (c >= 0) & (c != ho.ids[i]) & (ids[pos] == c) if len(ids) else np.zeros(len(c), bool)
            scores[i, ok] = vecs[pos[ok]] @ ho.x[i]
        for d in depths:
            sd = scores[:, :d]
            top = np.argsort(-sd, axis=1, kind="stable")[:, :K]
            found = np.take_along_axis(cand[:, :d], top, 1)
            found = np.where(np.take_along_axis(sd, top, 1) > -np.inf, found, -1)
            out[(p, d)] = _recall(found, ho.truth)
    return out


#: Of a timed setting's single queries, this many are each followed by a bare exact (flat) query,
#: so its p50 is compared with an exact p50 of the same minute (a shared machine's load drifts).
EXACT_INTERLEAVED = 50


def _exact_ms(x: np.ndarray, q: np.ndarray) -> float:
    """Milliseconds of one bare exact (flat) query ``q`` (1 x d) over ``x``."""
    t = time.perf_counter()
    faiss.knn(q, x, K, metric=faiss.METRIC_INNER_PRODUCT)
    return (time.perf_counter() - t) * 1000


def time_single(index: faiss.Index, probe: int, depth: int, ho: HeldOut, store: Store, model: str,
                n: int = 100, flat: np.ndarray | None = None,
                exact_queries: int = EXACT_INTERLEAVED) -> tuple[float, float, float | None]:
    """p50/p95 ms of single queries (faiss on 1 thread + one store read + exact scores + top-k)
    and, with ``flat`` (all vectors), the p50 ms of bare exact queries interleaved with the first
    ``exact_queries`` of them (else ``None``)."""
    params = builders.search_params(index, probe)
    times, exact = [], []
    with faiss_threads(1):
        for i in range(min(n, len(ho.x))):
            t = time.perf_counter()
            _, c = index.search(ho.x[i : i + 1], depth + 1, params=params)
            cand = np.unique(c[0][c[0] >= 0])
            ids, vecs = store.get_embeddings(model, cand)
            s = vecs @ ho.x[i]
            np.argsort(-s)[: K + 1]
            times.append((time.perf_counter() - t) * 1000)
            if flat is not None and i < exact_queries:
                exact.append(_exact_ms(flat, ho.x[i : i + 1]))
    ex = float(np.percentile(exact, 50)) if exact else None
    return float(np.percentile(times, 50)), float(np.percentile(times, 95)), ex


def exact_p50(x: np.ndarray, q: np.ndarray, n: int = 30) -> float:
    """p50 ms of a bare exact (flat) single query over ``x`` on one faiss thread."""
    with faiss_threads(1):
        return float(np.percentile([_exact_ms(x, q[i : i + 1]) for i in range(min(n, len(q)))], 50))


def build(store: Store, model: str, factory: str, n: int, kmeans_iter: int = 10,
          seed: int = 0) -> tuple[faiss.Index, float]:
    """A ``factory`` index over every stored vector of ``model``, trained on a sample; seconds."""
    t = time.perf_counter()
    upto = store.last_id()
    nlist = decisions.factory_parts(factory)["nlist"] or 1
    size = decisions.sample_size(factory, n, nlist)  # the sample a rebuild trains on: build_s predicts it
    sample = builders.sample_vectors(store, model, size, upto, n, seed=seed)
    chunks = prefetch(store.iter_embeddings(model, 0, 16384), 4, name="index-prefetch")
    try:
        index = builders.new_budget(store.model_dim(model), factory, sample, kmeans_iter)
        builders.fill(index, chunks, upto, total=n, desc=f"tune {factory}")
    finally:
        chunks.close()
    return index, time.perf_counter() - t


def measure_index(index: faiss.Index, factory: str, ho: HeldOut, vectors: Vectors, store: Store,
                  model: str, target_recall: float, depths: list[int] | None = None,
                  probes: list[int] | None = None, latency_queries: int = 100,
                  time_all: bool = False) -> list[dict[str, Any]]:
    """Rows ``{factory, probe, depth, recall_at_10, p50_ms, p95_ms, exact_p50_ms}`` for one built
    index; only the frontier settings (or all, ``time_all``) are timed, each next to bare exact
    queries when the vectors are in RAM (``vectors.x``; else ``exact_p50_ms`` is ``None``)."""
    depths = depths or list(decisions.TUNE_DEPTHS)
    probes = probes or decisions.candidate_probes(factory)
    grid = recall_grid(index, probes, depths, ho, vectors)
    timed = set(grid) if time_all else set(decisions.frontier(grid, target_recall))
    rows = []
    for (p, d), r in sorted(grid.items()):
        row: dict[str, Any] = {"factory": factory, "probe": p, "depth": d, "recall_at_10": r,
                               "p50_ms": None, "p95_ms": None, "exact_p50_ms": None}
        if (p, d) in timed:
            row["p50_ms"], row["p95_ms"], row["exact_p50_ms"] = time_single(
                index, p, d, ho, store, model, latency_queries, vectors.x)
            row["p50_over_exact"] = decisions.p50_over_exact(row)
        rows.append(row)
    return rows


@dataclass
class TuneResult:
    """Every measured row, the chosen setting and how the tune ran."""

    rows: list[dict[str, Any]]
    chosen: TunedSetting | None
    factories: list[dict[str, Any]]
    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "chosen": None if self.chosen is None else dataclasses.asdict(self.chosen),
                "factories": self.factories, **self.info}


def tune(store: Store, model: str, target_recall: float = 0.99, memory_budget: int | float | None = 0.1,
         queries: int = 500, latency_queries: int = 100,
         factories: list[str] | None = None, quick: bool = False, removable_only: bool = True,
         seed: int = 12345, save: bool = True, time_all: bool = False,
         progress: Callable[[str], None] | None = None) -> TuneResult:
    """Measure the candidate settings of ``model``'s collection and store the fastest that meets
    ``target_recall`` (recall@10 after the exact re-rank, against exact search).

    Graph indexes (no id removal) are measured but only chosen when ``removable_only`` is off.
    """
    t0 = time.perf_counter()
    n = store.model_info()[model].count
    dim = store.model_dim(model)
    budget = decisions.resolve_budget(memory_budget, n, dim)
    index_budget = budget  # the index may take the whole budget (there is no hot set)
    cands = factories or [f for f in decisions.candidate_factories(n, dim, index_budget, quick=quick)
                          if builders.buildable(dim, f)]  # e.g. RaBitQ needs faiss >= 1.11
    too_big = [f for f in cands if decisions.factory_bytes(f, n, dim) > index_budget]
    if too_big:  # an index could never use them: the budget would reject the setting
        log.warning("not measuring %s: over the index budget of %d bytes", ", ".join(too_big), index_budget)
        cands = [f for f in cands if f not in too_big]
    if not cands:
        raise ValueError(f"no candidate index fits {index_budget} bytes for {n} x {dim} vectors")
    vectors = Vectors(store, model)
    if n * dim * 4 <= IN_RAM_BYTES:
        vectors = Vectors(store, model, *load_all(store, model))
    with faiss_threads():
        ho = held_out(store, model, queries, seed, vectors)
        need = decisions.with_margin(target_recall, len(ho.x))  # so it holds on fresh queries
        rows, built = _measure_all(store, model, cands, n, dim, ho, vectors, need,
                                   latency_queries, time_all, progress)
        flat_p50 = exact_p50(vectors.x, ho.x) if vectors.x is not None else None
    pickable = [r for r in rows if r["removable"] or not removable_only]
    fastest = decisions.pick_fastest(pickable, need)
    best = decisions.pick_setting(pickable, need, flat_p50)  # build time decides among the safely fast
    chosen = None
    if best is not None:
        chosen = TunedSetting(model=model, dim=dim, n=n, factory=best["factory"], probe=int(best["probe"]),
                              rerank_depth=int(best["depth"]), target_recall=target_recall,
                              recall_at_10=best["recall_at_10"], p50_ms=best["p50_ms"],
                              p95_ms=best["p95_ms"], meets_target=best["meets_target"],
                              memory_budget=memory_budget, budget_bytes=budget, queries=len(ho.x),
                              quick=quick)
        if save:
            save_setting(store, chosen)
    info = {"model": model, "n": n, "dim": dim, "target_recall": target_recall,
            "required_recall": need,
            "memory_budget": memory_budget, "budget_bytes": budget, "index_budget_bytes": index_budget,
            "queries": len(ho.x), "latency_queries": latency_queries, "seconds": time.perf_counter() - t0,
            "exact_p50_ms": flat_p50, "latency_tolerance": decisions.LATENCY_TOLERANCE,
            "fast_enough_of_exact": decisions.FAST_ENOUGH_OF_EXACT,
            "p50_target_of_exact": decisions.P50_TARGET_OF_EXACT, "fastest_setting": fastest,
            "saved_to": setting_key(store.namespace, model) if save and chosen else None,
            "load_avg_1m": os.getloadavg()[0]}
    return TuneResult(rows, chosen, built, info)


def _measure_all(store: Store, model: str, cands: list[str], n: int, dim: int, ho: HeldOut, vectors: Vectors,
                 target_recall: float, latency_queries: int, time_all: bool,
                 progress: Callable[[str], None] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    built: list[dict[str, Any]] = []
    for f in tqdm(cands, desc="tune", unit="index", disable=len(cands) < 2):
        index, build_s = build(store, model, f, n)
        size = decisions.factory_bytes(f, n, dim)
        frows = measure_index(index, f, ho, vectors, store, model, target_recall,
                              latency_queries=latency_queries, time_all=time_all)
        for r in frows:
            r.update(build_s=build_s, index_bytes=size, index_over_raw=size / (n * dim * 4),
                     removable=decisions.supports_removal(f))
        rows += frows
        best = decisions.pick_fastest(frows, target_recall)
        built.append({"factory": f, "build_s": build_s, "build_vectors_per_s": n / max(build_s, 1e-9),
                      "index_bytes": size, "best": best})
        log.info("tune %s: build %.1fs, best %s", f, build_s, best)
        if progress:
            progress(f"{f}: build {build_s:.1f}s, best {best}")
        del index
    return rows, built


def quick_tune_built(store: Store, model: str, index: faiss.Index, factory: str,
                     config: IndexConfig, target_recall: float = 0.99, queries: int = 200,
                     save: bool = True) -> TunedSetting | None:
    """A quick tune of the probe and re-rank depth of an index already built (after a default
    rebuild): one extra streamed pass over the store for the exact neighbours."""
    n = int(index.ntotal)
    dim = store.model_dim(model)
    with faiss_threads():
        ho = held_out(store, model, queries, seed=777)
        vectors = Vectors(store, model)
        need = decisions.with_margin(target_recall, len(ho.x))
        rows = measure_index(index, factory, ho, vectors, store, model, need,
                             depths=[100, 200, 400, 800], latency_queries=50)
    best = decisions.pick_fastest(rows, need)
    if best is None:
        return None
    budget = decisions.resolve_budget(config.memory_budget, n, dim)
    s = TunedSetting(model=model, dim=dim, n=n, factory=factory, probe=int(best["probe"]),
                     rerank_depth=int(best["depth"]), target_recall=target_recall,
                     recall_at_10=best["recall_at_10"], p50_ms=best["p50_ms"], p95_ms=best["p95_ms"],
                     meets_target=best["meets_target"], memory_budget=config.memory_budget,
                     budget_bytes=budget, queries=len(ho.x), quick=True)
    if save and not store.read_only:
        save_setting(store, s)
    log.info("index %s/%s: quick tune chose %s probe %d depth %d (recall@10 %.4f, p50 %.2f ms)",
             store.namespace, model, factory, s.probe, s.rerank_depth, s.recall_at_10, s.p50_ms)
    return s


def format_table(rows: list[dict[str, Any]], chosen: TunedSetting | None = None) -> str:
    """The timed rows (frontier settings) as a small text table, best first per factory."""
    timed = [r for r in rows if r.get("p50_ms") is not None]
    lines = [f"{'factory':<28} {'probe':>5} {'depth':>5} {'recall@10':>9} {'p50 ms':>7} {'p95 ms':>7} "
             f"{'/exact':>6} {'size/raw':>8} {'build s':>7}"]
    for r in sorted(timed, key=lambda r: (r["factory"], r["p50_ms"])):
        mark = ""
        if chosen and (r["factory"], r["probe"], r["depth"]) == (chosen.factory, chosen.probe,
                                                                  chosen.rerank_depth):
            mark = "  <- chosen"
        ratio = decisions.p50_over_exact(r)
        lines.append(f"{r['factory']:<28} {r['probe']:>5} {r['depth']:>5} {r['recall_at_10']:>9.4f} "
                     f"{r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} "
                     f"{'—' if ratio is None else f'{ratio:.3f}':>6} {r.get('index_over_raw', 0):>8.3f} "
                     f"{r.get('build_s', 0):>7.1f}{mark}")
    return "\n".join(lines)


# ------------------------------------------------------------- SimilarityIndex hooks
def config_for(store: Store, model: str, config: IndexConfig, dim: int) -> IndexConfig:
    """The config a :class:`SimilarityIndex` runs with: ``config`` plus the stored tuned setting."""
    if not config.tuned or config.factory is not None or config.mode == "exact":
        return config
    info = store.model_info().get(model)
    if info is None:
        return config
    return apply_setting(config, load_setting(store, model), info.count, dim)


def after_rebuild(index: Any) -> None:
    """Quick-tune a default budget build of a large collection once (probe and re-rank depth),
    store the setting and switch ``index`` (a SimilarityIndex) to it."""
    cfg: IndexConfig = index.config
    if not cfg.auto_tune or not decisions.should_auto_tune(index.ntotal, index.mode, cfg.factory is not None,
                                                               cfg.auto_tune_min_n):
        return
    t = time.perf_counter()
    try:
        s = quick_tune_built(index.store, index.model, index.index, index.factory, cfg, cfg.tune_target)
    except Exception as exc:  # noqa: BLE001 - a failed tune must not fail the build
        log.warning("index %s/%s: quick tune failed (%s); keeping the defaults", index.store.namespace,
                    index.model, exc)
        return
    if s is not None:
        index.config = apply_setting(cfg, s, index.ntotal, index.dim)
        index._setup_search(index.index)
    index.last_rebuild_timings["quick_tune"] = time.perf_counter() - t
