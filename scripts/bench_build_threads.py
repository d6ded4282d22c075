"""Full index rebuilds of one forced factory with faiss on 1 and 2 OpenMP threads, alternated.

    python scripts/bench_build_threads.py --kv rocksdb:data/kv --namespace r50k \
        --model efficientnet_lite0 --factory RaBitQfs_64 --rounds 3 --json out.json

Each round rebuilds the model's index from the store once per thread count (a fresh snapshot
directory each time, no tune), and the JSON holds every rebuild's timings (``sample``, ``train``,
``read_wait``, ``add``, ``stream``, ``total``) and the median speed per thread count, with the
2-thread over 1-thread ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile

from imgsim_lab.index import SimilarityIndex
from imgsim_lab.index.config import IndexConfig
from imgsim_lab.index.tune import faiss_threads
from imgsim_lab.jsonio import dumps, write_json
from imgsim_lab.store import open_store

THREADS = (1, 2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kv", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--factory", required=True, help="faiss factory to build, e.g. RaBitQfs_64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the result here too")
    args = ap.parse_args(argv)
    store = open_store(args.kv, args.namespace)
    rows: list[dict] = []
    try:
        n = store.model_info()[args.model].count
        for r in range(args.rounds):
            for nt in THREADS:
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = IndexConfig(mode="budget", memory_budget=0.1, factory=args.factory,
                                      auto_tune=False, tuned=False, autosave=False, snapshot_dir=tmp)
                    idx = SimilarityIndex(store, args.model, cfg)
                    with faiss_threads(nt):  # the index's own setting is decided once per process
                        idx.rebuild()
                    rows.append({"factory": args.factory, "threads": nt, "round": r,
                                 **idx.last_rebuild_timings})
    finally:
        store.close()
    medians = {nt: statistics.median(x["total"] for x in rows if x["threads"] == nt) for nt in THREADS}
    out = {"factory": args.factory, "namespace": args.namespace, "model": args.model, "n": n,
           "rows": rows,
           "summary": {**{f"threads{nt}": {"total_s_median": s, "vectors_per_s_median": n / s}
                          for nt, s in medians.items()},
                       "threads2_over_threads1_speed": medians[1] / medians[2]}}
    sys.stdout.write((write_json(args.json, out) if args.json else dumps(out)) + "\n")
    return out


if __name__ == "__main__":
    main()
