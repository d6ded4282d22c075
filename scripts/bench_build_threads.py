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

from imgsim_lab.bench.rebuild import add_store_args, forced_rebuild
from imgsim_lab.jsonio import dumps, write_json
from imgsim_lab.store import open_store

THREADS = (1, 2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_store_args(ap)
    ap.add_argument("--factory", required=True, help="faiss factory to build, e.g. RaBitQfs_64")
    args = ap.parse_args(argv)
    store = open_store(args.kv, args.namespace)
    rows: list[dict] = []
    try:
        n = store.model_info()[args.model].count
        for r in range(args.rounds):
            for nt in THREADS:
                rows.append({"factory": args.factory, "threads": nt, "round": r,
                             **forced_rebuild(store, args.model, args.factory, nt)})
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
