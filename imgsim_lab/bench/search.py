"""``imgsim bench search``: SimilarityIndex recall, latency, memory and rebuild speed.

Runs on the ingested vectors of ``--model`` or on ``--synthetic N --dim D`` seeded
vectors written to the store (model key ``synthetic<D>``). Queries are stored
vectors, each excluding itself; recall@10 is measured against exact brute force in
the same run, and ``exact_p50_ms`` is a bare FAISS ``IndexFlatIP`` over the same vectors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from typing import Any

import faiss
import numpy as np

from imgsim_lab.bench import _peers
from imgsim_lab.bench.rebuild import read_pass
from imgsim_lab.index import IndexConfig, SimilarityIndex, tune
from imgsim_lab.index.synthetic import SyntheticSpec, neighbour_similarity, write_to_store
from imgsim_lab.store import open_store

log = logging.getLogger(__name__)

NAME = "search"
HELP = "similarity index: recall@10 vs brute force, single-query latency, memory, rebuild speed"
K = 10
K100 = 100
#: Above this many bytes of raw vectors the bare flat index is timed first and freed.
BIG_BYTES = 2 << 30


#: The CLI adds ``--kv`` and ``--namespace`` (this module never imports the CLI).
STORE_ARGS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument("--npz", default=None, metavar="PATH",
                        help="write the precomputed embeddings of PATH (<split>_x, _y, _paths) to the "
                             "store under --model first (a real collection without re-embedding)")
    parser.add_argument("--split", default="train", help="the --npz split (default train)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many --npz rows")
    parser.add_argument("--tune", action="store_true",
                        help="run `imgsim index tune` (same budget, --target-recall) first, in this run")
    parser.add_argument("--target-recall", type=float, default=0.99, help="recall@10 target of --tune")
    parser.add_argument("--tune-queries", type=int, default=500, help="held-out queries of --tune")
    parser.add_argument("--tune-factory", action="append", default=None,
                        help="--tune only these factories (repeatable; default: the candidate grid)")
    parser.add_argument("--tune-latency-queries", type=int, default=100,
                        help="single queries timed per tuned setting")
    parser.add_argument("--zipf", type=int, default=0, metavar="N",
                        help="replay N queries drawn Zipf-like (s=1.1) from the query set (users "
                             "re-searching the same images), each with and without the query cache: "
                             "latencies, cache hits, share of repeated queries (default 0: skip)")
    parser.add_argument("--peers", nargs="?", const=",".join(_peers.PEERS), default=None,
                        help="also run peer libraries on the same vectors (comma list; default all: "
                             + ", ".join(_peers.PEERS) + ")")
    parser.add_argument("--peer-timeout", type=float, default=None,
                        help="seconds per peer (default: _peers.TIMEOUT_S, autofaiss 5400)")


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
        if args.npz:
            from imgsim_lab.bench._vectors import write_npz_collection

            write_npz_collection(store, args.npz, model, args.split, args.limit)
        if args.synthetic:
            model = f"synthetic{args.dim}"
            have = store.model_info().get(model)
            if have is None or have.count < args.synthetic:
                write_to_store(store, model, args.synthetic, SyntheticSpec(dim=args.dim, seed=args.seed))
        with tempfile.TemporaryDirectory(prefix="imgsim-bench-search-") as tmp:
            tuned = None
            if args.tune:
                t = time.perf_counter()
                tuned = tune.tune(store, model, args.target_recall, budget if budget is not None else 0.1,
                                  queries=args.tune_queries, factories=args.tune_factory,
                                  latency_queries=args.tune_latency_queries).to_dict()
                log.info("tune result: %s", json.dumps(tuned, default=str))
                tuned["wall_s"] = time.perf_counter() - t
            cfg = IndexConfig(mode=args.mode, memory_budget=budget, autosave=False,
                              snapshot_dir=args.snapshot_dir or tmp)
            with tune.faiss_threads():  # cores - 1 (see tune.faiss_threads); single queries use --threads
                out = _measure(store, model, cfg, args, tmp)
            out["tune"] = tuned
            return out
    finally:
        store.close()


def _measure(store: Any, model: str, cfg: IndexConfig, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    t_read = time.perf_counter()
    ids, x = _load_all(store, model)
    read_s = time.perf_counter() - t_read  # the ceiling of any rebuild: one plain pass over the store
    if args.synthetic and len(ids) != args.synthetic:
        log.warning("the store holds %d vectors of %s, not %d: measuring all of them",
                    len(ids), model, args.synthetic)
    n, dim = x.shape
    load_start = os.getloadavg()[0]  # the machine may be shared: judge latencies with this
    log.info("%d vectors of %d dims loaded", n, dim)
    rng = np.random.default_rng(args.seed + 1)
    qrows = rng.choice(n, size=min(args.queries, n), replace=False)
    q, qids = x[qrows], ids[qrows]

    _, gt = faiss.knn(q, x, K100 + 1, metric=faiss.METRIC_INNER_PRODUCT)
    truth_rows = np.array([[j for j in row if j >= 0 and j != qr][:K100]
                           for row, qr in zip(gt, qrows, strict=True)])
    truth = [[int(ids[j]) for j in row[:K]] for row in truth_rows]
    truth100 = [[int(ids[j]) for j in row] for row in truth_rows]
    peers = None
    if args.peers:
        budget_bytes = int(cfg.memory_budget * n * dim * 4) if isinstance(cfg.memory_budget, float) else \
            int(cfg.memory_budget or n * dim * 4)
        peers = _peers.run_peers(x, q, qrows, truth_rows[:, :K], budget_bytes, os.path.join(tmp, "peers"),
                                 tuple(p for p in args.peers.split(",") if p), args.latency_queries,
                                 args.peer_timeout)
    sims = neighbour_similarity(x, n_queries=200, seed=args.seed)

    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    exact: list[float] = []
    big = n * dim * 4 > BIG_BYTES  # time the flat index first and free it before building ours

    def time_flat(i: int) -> None:
        t = time.perf_counter()
        flat.search(q[i : i + 1], K)
        exact.append(time.perf_counter() - t)

    if big:
        with tune.faiss_threads(args.threads):
            for i in range(min(args.exact_queries, len(q))):
                time_flat(i)
    if big:
        del flat
        del x

    warm_read_s = read_pass(store, model)  # right before the rebuild: the same cache and load
    idx = SimilarityIndex(store, model, cfg)  # a fresh snapshot dir: this is a full rebuild
    rebuild_s = idx.last_rebuild_s

    found = idx.search_batch(q, K, [[int(i)] for i in qids])
    recall = float(np.mean([len({h.id for h in f} & set(tr)) / max(len(tr), 1)
                            for f, tr in zip(found, truth, strict=True)]))
    found100 = idx.search_batch(q, K100, [[int(i)] for i in qids])
    recall100 = float(np.mean([len({h.id for h in f} & set(tr)) / max(len(tr), 1)
                               for f, tr in zip(found100, truth100, strict=True)]))

    lat: list[float] = []
    # interleaved with the flat index (when kept), so a shared machine's load hits both alike
    with tune.faiss_threads(args.threads):
        for i in range(min(args.latency_queries, len(q))):
            t = time.perf_counter()
            idx.search(q[i], K, exclude_ids=[int(qids[i])])
            lat.append(time.perf_counter() - t)
            if not big and i < args.exact_queries:
                time_flat(i)

    zipf = _zipf_stream(idx, q, qids, args) if args.zipf else None
    st = idx.stats()
    p50, exact_p50 = _pct(lat, 50), _pct(exact, 50)
    return {
        "benchmark": NAME,
        "store": store.url, "backend": store.backend, "namespace": store.namespace, "model": model,
        "n": n, "dim": dim, "mode": st["mode"], "factory": st["factory"], "nprobe": st["nprobe"],
        "memory_budget": cfg.memory_budget, "budget_bytes": st["budget_bytes"],
        "queries": len(q), "latency_queries": len(lat), "threads": args.threads,
        "recall_at_10": recall, "recall_at_100": recall100,
        "rerank_min": idx.config.rerank_min, "rerank_factor": idx.config.rerank_factor,
        "tuned_factory": idx.config.factory, "zipf": zipf, "peers": peers,
        "faiss_serialized_bytes": int(faiss.serialize_index(idx.index).nbytes),
        "p50_ms": p50, "p95_ms": _pct(lat, 95), "exact_p50_ms": exact_p50,
        "p50_over_exact_p50": p50 / exact_p50,
        "index_bytes": st["index_bytes"], "ids_bytes": st["ids_bytes"],
        "raw_vector_bytes": st["raw_vector_bytes"],
        "index_over_raw": st["index_bytes"] / st["raw_vector_bytes"],
        "ram_over_raw": (st["index_bytes"] + st["ids_bytes"]) / st["raw_vector_bytes"],
        "rebuild_s": rebuild_s, "rebuild_vectors_per_s": n / rebuild_s,
        "store_read_s": read_s, "store_read_vectors_per_s": n / read_s,
        "rebuild_over_read": rebuild_s / read_s,
        "store_read_warm_s": warm_read_s, "store_read_warm_vectors_per_s": n / warm_read_s,
        "rebuild_over_warm_read": rebuild_s / warm_read_s,
        "rebuild_phases_s": idx.last_rebuild_timings,
        "sim_at_10": sims.get("sim_at_10"), "sim_at_100": sims.get("sim_at_100"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "faiss": faiss.__version__, "load_avg_1m_start": load_start,
                    "load_avg_1m_end": os.getloadavg()[0]},
    }


def zipf_stream(pool: int, size: int, seed: int, s: float = 1.1) -> np.ndarray:
    """``size`` query numbers in ``[0, pool)``, query i drawn with probability ~ 1 / (i + 1)^s."""
    w = 1.0 / np.arange(1, pool + 1) ** s
    return np.random.default_rng(seed).choice(pool, size=size, p=w / w.sum())


def _zipf_stream(idx: SimilarityIndex, q: np.ndarray, qids: np.ndarray,
                 args: argparse.Namespace) -> dict[str, Any]:
    """Replay a Zipf-like stream (users re-searching popular images), each query twice in a row:
    bypassing the query cache, then through it (emptied first), so a shared machine's load hits
    both alike. Reports both latencies, the cache's hits and the share of queries that repeat an
    earlier identical one (the most the cache can serve).

    There is no hot set of vectors any more (measured on this stream, it did not pay: see
    docs/index.md); the query cache keeps whole results instead.
    """
    stream = zipf_stream(len(q), args.zipf, args.seed + 7)
    lat, lat_cached = [], []
    idx.query_cache.clear()
    before = idx.query_cache.stats()
    with tune.faiss_threads(args.threads):
        for i in stream.tolist():
            t = time.perf_counter()
            idx.search(q[i], K, exclude_ids=[int(qids[i])], cache=False)
            lat.append(time.perf_counter() - t)
            t = time.perf_counter()
            idx.search(q[i], K, exclude_ids=[int(qids[i])])
            lat_cached.append(time.perf_counter() - t)
    after = idx.query_cache.stats()
    distinct = int(len(set(stream.tolist())))
    hits = after["hits"] - before["hits"]
    return {"queries": len(stream), "distinct": distinct, "s": 1.1,
            "repeat_share": 1 - distinct / max(len(stream), 1),
            "p50_ms": _pct(lat, 50), "mean_ms": float(np.mean(lat) * 1000),
            "cache_capacity": after["capacity"], "cache_hits": hits,
            "cache_hit_rate": hits / max(len(stream), 1),
            "cached_p50_ms": _pct(lat_cached, 50), "cached_mean_ms": float(np.mean(lat_cached) * 1000),
            "cached_p95_ms": _pct(lat_cached, 95), "p95_ms": _pct(lat, 95)}
