"""Flat RaBitQ rebuilds with the cache-blocked numpy encoder against the whole-chunk one, alternated.

    python scripts/bench_rabitq_blocks.py --kv rocksdb:data/kv --namespace r50k \
        --model efficientnet_lite0 --rounds 3 --json out.json

Each round times, on the collection's own vectors: a read-only pass over the store (the
ceiling of a rebuild), the encoding of one 16,384-vector chunk by ``builders.rabitq_codes`` at
``RABITQ_BLOCK`` rows per block and at a whole chunk per block (the encoder before session 28)
and by faiss' own ``sa_encode``, and a full ``RaBitQ`` rebuild from the store with each numpy
arm (a fresh snapshot directory each time, no tune). The JSON holds every row and the medians,
with the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import faiss
import numpy as np

from imgsim_lab.bench.rebuild import add_store_args, forced_rebuild, read_pass
from imgsim_lab.index import builders
from imgsim_lab.index.tune import faiss_threads
from imgsim_lab.jsonio import dumps, write_json
from imgsim_lab.store import open_store

CHUNK = 16384
ARMS = {"blocked": builders.RABITQ_BLOCK, "whole_chunk": 1 << 30}


def _first_rows(store, model: str, n: int) -> np.ndarray:
    """The model's first ``n`` stored vectors (the store yields them in pieces of <= 16 MB)."""
    parts, got = [], 0
    for _ids, v in store.iter_embeddings(model, chunk_size=n):
        parts.append(v)
        got += len(v)
        if got >= n:
            break
    return np.concatenate(parts)[:n]


def _encode_s(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_args(ap)
    args = ap.parse_args(argv)
    store = open_store(args.kv, args.namespace)
    rows: list[dict] = []
    try:
        n = store.model_info()[args.model].count
        x = _first_rows(store, args.model, CHUNK)
        flat = faiss.IndexRaBitQ(x.shape[1], faiss.METRIC_INNER_PRODUCT)
        flat.train(x[:2048])
        center = faiss.vector_to_array(flat.center).astype(np.float32)
        for r in range(args.rounds):
            rows.append({"round": r, "arm": "read_only", "total": read_pass(store, args.model)})
            with faiss_threads(1):
                rows.append({"round": r, "arm": "faiss_sa_encode",
                             "encode_chunk_s": _encode_s(lambda: flat.sa_encode(x), 1)})
            for arm, block in ARMS.items():
                enc = _encode_s(lambda b=block: builders.rabitq_codes(x, center, True, block=b))
                saved = builders.RABITQ_BLOCK
                builders.RABITQ_BLOCK = block
                try:
                    timings = forced_rebuild(store, args.model, "RaBitQ")
                finally:
                    builders.RABITQ_BLOCK = saved
                rows.append({"round": r, "arm": arm, "block": min(block, CHUNK),
                             "encode_chunk_s": enc, **timings})
    finally:
        store.close()

    def med(arm: str, key: str) -> float:
        return statistics.median(row[key] for row in rows if row["arm"] == arm)

    enc = {a: med(a, "encode_chunk_s") for a in (*ARMS, "faiss_sa_encode")}
    total = {a: med(a, "total") for a in (*ARMS, "read_only")}
    out = {"factory": "RaBitQ", "namespace": args.namespace, "model": args.model, "n": n,
           "chunk": len(x), "rows": rows,
           "summary": {
               "encode_us_per_vector": {a: s / len(x) * 1e6 for a, s in enc.items()},
               "encode_blocked_speedup_vs_whole_chunk": enc["whole_chunk"] / enc["blocked"],
               "encode_blocked_speedup_vs_faiss": enc["faiss_sa_encode"] / enc["blocked"],
               "rebuild_vectors_per_s_median": {a: n / total[a] for a in ARMS},
               "read_only_vectors_per_s_median": n / total["read_only"],
               "rebuild_blocked_speedup_vs_whole_chunk": total["whole_chunk"] / total["blocked"],
               "rebuild_blocked_over_read_only_time": total["blocked"] / total["read_only"]}}
    sys.stdout.write((write_json(args.json, out) if args.json else dumps(out)) + "\n")
    return out


if __name__ == "__main__":
    main()
