"""Exploratory tune behind docs/index.md "The latency margin" (issue 19, branch p50).

Usage: ``python p50margin_explore.py NPZ KV_URL OUT.json FACTORY [FACTORY ...]``

Writes the npz's train split into the store (idempotent), runs ``tune.tune(..., save=False)``
over the given factories (500 held-out queries, 200 timed per frontier row), then splits each
factory's best row into faiss and store-read time (200 other queries) against the p50 of 100
bare flat queries, and saves everything (``breakdown``) as JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import faiss
import numpy as np

from imgsim_lab.bench._vectors import write_npz_collection
from imgsim_lab.index import builders, tune
from imgsim_lab.store import open_store

MODEL = "efficientnet_lite0"


def breakdown(store, best: dict, ho: tune.HeldOut, vectors: tune.Vectors, n: int) -> dict:
    """p50 ms of faiss, of the store read and of the whole query for ``best``'s setting."""
    index, _ = tune.build(store, MODEL, best["factory"], n)
    params = builders.search_params(index, best["probe"])
    faiss.omp_set_num_threads(1)
    tf, tr, tt = [], [], []
    for i in range(len(ho.x)):
        t0 = time.perf_counter()
        _, c = index.search(ho.x[i : i + 1], best["depth"] + 1, params=params)
        t1 = time.perf_counter()
        _, vecs = store.get_embeddings(MODEL, np.unique(c[0][c[0] >= 0]))
        t2 = time.perf_counter()
        np.argsort(-(vecs @ ho.x[i]))[:11]
        t3 = time.perf_counter()
        tf.append(t1 - t0)
        tr.append(t2 - t1)
        tt.append(t3 - t0)
    exact = tune.exact_p50(vectors.x, ho.x, 100)
    total = 1000 * float(np.median(tt))
    return {"factory": best["factory"], "probe": best["probe"], "depth": best["depth"],
            "recall": best["recall_at_10"], "faiss_p50": 1000 * float(np.median(tf)),
            "read_p50": 1000 * float(np.median(tr)), "total_p50": total, "exact_p50": exact,
            "ratio": total / exact}


def main(npz: str, kv: str, out: str, factories: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING)
    store = open_store(kv, "x")
    write_npz_collection(store, npz, MODEL)
    n = store.model_info()[MODEL].count
    res = tune.tune(store, MODEL, 0.99, 0.1, queries=500, latency_queries=200, factories=factories,
                    save=False)
    d = res.to_dict()
    vectors = tune.Vectors(store, MODEL, *tune.load_all(store, MODEL))
    with tune.faiss_threads():
        ho = tune.held_out(store, MODEL, 200, 999, vectors)
    d["breakdown"] = [breakdown(store, b["best"], ho, vectors, n) for b in res.factories if b["best"]]
    with open(out, "w") as f:
        json.dump(d, f, default=str, indent=1)
    for row in d["breakdown"]:
        print(json.dumps(row))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
