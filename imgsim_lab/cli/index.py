"""``imgsim index tune|show|forget``: tune the budget index to a recall target, stored with the index."""

from __future__ import annotations

import argparse
import dataclasses
import json

from imgsim_lab.cli._common import add_store_args
from imgsim_lab.jsonio import write_json

NAME = "index"
HELP = "tune the memory-budgeted index to a recall target (stored in the store), or show it"


def _budget(text: str | None) -> float | int | None:
    if text is None:
        return None
    v = float(text)
    return v if v <= 1 else int(v)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    t = sub.add_parser("tune", help="measure candidate settings on held-out stored vectors; store, of "
                                    "those meeting --target-recall, the fastest to build at p50 <= "
                                    "0.15x exact, else the lowest p50 over exact")
    add_store_args(t)
    t.add_argument("--model", required=True, help="model key whose vectors are indexed")
    t.add_argument("--target-recall", type=float, default=0.99, help="recall@10 to reach (default 0.99)")
    t.add_argument("--budget", default="0.1",
                   help="memory budget: a fraction (0, 1] of the raw vectors, or bytes (default 0.1)")
    t.add_argument("--queries", type=int, default=500, help="held-out stored vectors used as queries")
    t.add_argument("--latency-queries", type=int, default=100, help="single queries timed per setting")
    t.add_argument("--factory", action="append", default=None,
                   help="measure only this faiss factory (repeatable); default: the candidate grid")
    t.add_argument("--quick", action="store_true", help="PCA + IVF + SQ8 candidates only")
    t.add_argument("--allow-graph", action="store_true",
                   help="may choose an HNSW graph over codes (fast, but deletions need a rebuild)")
    t.add_argument("--time-all", action="store_true", help="time every setting, not just the frontier")
    t.add_argument("--dry-run", action="store_true", help="measure and print, store nothing")
    t.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="write every row as JSON")
    for name, h in (("show", "print the stored tuned setting"),
                    ("forget", "remove the stored tuned setting")):
        s = sub.add_parser(name, help=h)
        add_store_args(s)
        s.add_argument("--model", required=True)


def run(args: argparse.Namespace) -> int:
    from imgsim_lab.index import tune
    from imgsim_lab.store import open_store

    store = open_store(args.kv, args.namespace, read_only=args.action == "show")
    try:
        if args.model not in store.model_info():
            raise SystemExit(f"the store {store.url} holds no vectors of model {args.model!r}")
        if args.action == "show":
            s = tune.load_setting(store, args.model)
            print(json.dumps(None if s is None else dataclasses.asdict(s), indent=2, sort_keys=True))
            return 0 if s is not None else 1
        if args.action == "forget":
            n = store.raw_delete([tune.setting_key(store.namespace, args.model)])
            print(f"removed {n} tuned setting(s) of {args.model}")
            return 0
        if not 0 < args.target_recall <= 1:
            raise SystemExit(f"--target-recall must be in (0, 1], got {args.target_recall}")
        result = tune.tune(store, args.model, args.target_recall, _budget(args.budget),
                           queries=args.queries,
                           latency_queries=args.latency_queries, factories=args.factory, quick=args.quick,
                           removable_only=not args.allow_graph, save=not args.dry_run,
                           time_all=args.time_all)
        print(tune.format_table(result.rows, result.chosen))
        c = result.chosen
        if c is None:
            print("no setting could be timed")
            return 1
        verdict = "meets" if c.meets_target else "MISSES"
        print(f"chosen: {c.factory} probe {c.probe} re-rank depth {c.rerank_depth}: recall@10 "
              f"{c.recall_at_10:.4f} ({verdict} {c.target_recall}), p50 {c.p50_ms:.2f} ms"
              + ("" if args.dry_run else f"; stored under {result.info['saved_to']}"))
        if args.json_out:
            write_json(args.json_out, result.to_dict())
        return 0 if c.meets_target else 1
    finally:
        store.close()
