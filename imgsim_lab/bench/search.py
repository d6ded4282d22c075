"""``imgsim bench search``: SimilarityIndex recall, latency, memory and rebuild speed.

Runs on the ingested vectors of ``--model`` or on ``--synthetic N --dim D`` seeded
vectors written to the store (model key ``synthetic<D>``). Queries are stored
vectors, each excluding itself; recall@10 is measured against exact brute force in
the same run, and ``exact_p50_ms`` is a bare FAISS ``IndexFlatIP`` over the same vectors.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from typing import Any

import faiss
import numpy as np

from imgsim_lab.cli._common import add_store_args
from imgsim_lab.index import IndexConfig, SimilarityIndex
from imgsim_lab.index.synthetic import SyntheticSpec, neighbour_similarity, write_to_store
from imgsim_lab.store import open_store

log = logging.getLogger(__name__)

NAME = "search"
HELP = "similarity index: recall@10 vs brute force, single-query latency, memory, rebuild speed"
K = 10
#: Above this many bytes of raw vectors the bare flat index is timed first and freed.
BIG_BYTES = 2 << 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_args(parser)
    parser.add_argument("--model", default=None, help="model key of ingested vectors")
    parser.add_argument("--synthetic", type=int, default=None, metavar="N",
                        help="write N seeded synthetic vectors to the store and use them")
    parser.add_argument("--dim", type=int, default=1280, help="synthetic dimension")
    parser.add_argument("--seed", type=int, default=0, help="synthetic seed")
    parser.add_argument("--mode", choices=["auto", "exact", "budget"], default="auto")
    parser.add_argument("--budget", type=float, default=None,
                        help="memory budget: bytes, or a fraction (0, 1] of the raw vectors")
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall@10")
    parser.add_argument("--latency-queries", type=int, default=300, help="single queries timed")
    parser.add_argument("--exact-queries", type=int, default=30, help="bare flat single queries timed")
    parser.add_argument("--threads", type=int, default=1, help="faiss threads for single queries")
    parser.add_argument("--snapshot-dir", default=None, help="index snapshot dir (default: a temp dir)")


def _load_all(store: Any, model: str) -> tuple[np.ndarray, np.ndarray]:
    ids, vecs = [], []
    for i, v in store.iter_embeddings(model, chunk_size=65536):
        ids.append(i)
        vecs.append(v)
    return np.concatenate(ids), np.concatenate(vecs)


def _pct(times: list[float], q: float) -> float:
    return float(np.percentile(np.array(times) * 1000, q))


def run(args: argparse.Namespace) -> dict[str, Any]:
    if (args.model is None) == (args.synthetic is None):
        raise SystemExit("give either --model or --synthetic N")
    budget = None if args.budget is None else (args.budget if args.budget <= 1 else int(args.budget))
    store = open_store(args.kv, args.namespace)
    try:
        model = args.model
        if args.synthetic:
            model = f"synthetic{args.dim}"
            have = store.model_info().get(model)
            if have is None or have.count < args.synthetic:
                write_to_store(store, model, args.synthetic, SyntheticSpec(dim=args.dim, seed=args.seed))
        with tempfile.TemporaryDirectory(prefix="imgsim-bench-search-") as tmp:
            cfg = IndexConfig(mode=args.mode, memory_budget=budget, autosave=False,
                              snapshot_dir=args.snapshot_dir or tmp)
            return _measure(store, model, cfg, args)
    finally:
        store.close()


def _measure(store: Any, model: str, cfg: IndexConfig, args: argparse.Namespace) -> dict[str, Any]:
    ids, x = _load_all(store, model)
    if args.synthetic and len(ids) != args.synthetic:
        log.warning("the store holds %d vectors of %s, not %d: measuring all of them",
                    len(ids), model, args.synthetic)
    n, dim = x.shape
    load_start = os.getloadavg()[0]  # the machine may be shared: judge latencies with this
    log.info("%d vectors of %d dims loaded", n, dim)
    rng = np.random.default_rng(args.seed + 1)
    qrows = rng.choice(n, size=min(args.queries, n), replace=False)
    q, qids = x[qrows], ids[qrows]

    threads = faiss.omp_get_max_threads()
    _, gt = faiss.knn(q, x, K + 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth = [[int(ids[j]) for j in row if j >= 0 and ids[j] != qi][:K]
             for row, qi in zip(gt, qids, strict=True)]
    sims = neighbour_similarity(x, n_queries=200, seed=args.seed)

    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    exact: list[float] = []
    big = n * dim * 4 > BIG_BYTES  # time the flat index first and free it before building ours

    def time_flat(i: int) -> None:
        t = time.perf_counter()
        flat.search(q[i : i + 1], K)
        exact.append(time.perf_counter() - t)

    faiss.omp_set_num_threads(args.threads)
    try:
        if big:
            for i in range(min(args.exact_queries, len(q))):
                time_flat(i)
    finally:
        faiss.omp_set_num_threads(threads)
    if big:
        del flat
        del x

    idx = SimilarityIndex(store, model, cfg)  # a fresh snapshot dir: this is a full rebuild
    rebuild_s = idx.last_rebuild_s

    found = idx.search_batch(q, K, [[int(i)] for i in qids])
    recall = float(np.mean([len({h.id for h in f} & set(tr)) / max(len(tr), 1)
                            for f, tr in zip(found, truth, strict=True)]))

    faiss.omp_set_num_threads(args.threads)
    try:  # interleaved with the flat index (when kept), so a shared machine's load hits both alike
        lat: list[float] = []
        for i in range(min(args.latency_queries, len(q))):
            t = time.perf_counter()
            idx.search(q[i], K, exclude_ids=[int(qids[i])])
            lat.append(time.perf_counter() - t)
            if not big and i < args.exact_queries:
                time_flat(i)
    finally:
        faiss.omp_set_num_threads(threads)

    st = idx.stats()
    p50, exact_p50 = _pct(lat, 50), _pct(exact, 50)
    return {
        "benchmark": NAME,
        "store": store.url, "backend": store.backend, "namespace": store.namespace, "model": model,
        "n": n, "dim": dim, "mode": st["mode"], "factory": st["factory"], "nprobe": st["nprobe"],
        "memory_budget": cfg.memory_budget, "budget_bytes": st["budget_bytes"],
        "queries": len(q), "latency_queries": len(lat), "threads": args.threads,
        "recall_at_10": recall,
        "p50_ms": p50, "p95_ms": _pct(lat, 95), "exact_p50_ms": exact_p50,
        "p50_over_exact_p50": p50 / exact_p50,
        "index_bytes": st["index_bytes"], "hot_bytes": st["hot_bytes"], "ids_bytes": st["ids_bytes"],
        "raw_vector_bytes": st["raw_vector_bytes"],
        "index_over_raw": st["index_bytes"] / st["raw_vector_bytes"],
        "ram_over_raw": (st["index_bytes"] + st["hot_bytes"] + st["ids_bytes"]) / st["raw_vector_bytes"],
        "rebuild_s": rebuild_s, "rebuild_vectors_per_s": n / rebuild_s,
        "rebuild_phases_s": idx.last_rebuild_timings,
        "hot_hit_rate": st["hot_hit_rate"], "hot_size": st["hot_size"],
        "sim_at_10": sims.get("sim_at_10"), "sim_at_100": sims.get("sim_at_100"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "faiss": faiss.__version__, "load_avg_1m_start": load_start,
                    "load_avg_1m_end": os.getloadavg()[0]},
    }
