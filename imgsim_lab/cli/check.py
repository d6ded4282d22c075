"""``imgsim check``: verify the store's invariants; ``--repair`` fixes what is safe."""

from __future__ import annotations

import argparse

from imgsim_lab.cli._common import add_store_args, is_embedded
from imgsim_lab.jsonio import write_json

NAME = "check"
HELP = "verify the store's invariants and report each problem (--repair fixes what is safe)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_args(parser)
    parser.add_argument("--repair", action="store_true", help="fix what is safe to fix")
    parser.add_argument("--json", dest="json_out", metavar="OUT", default=None, help="write the report")


def run(args: argparse.Namespace) -> int:
    from imgsim_lab.check import check_store
    from imgsim_lab.store import open_store

    # never creates a store; read-only unless repairing (a connection error exits 2, see cli.main)
    with open_store(args.kv, args.namespace, read_only=not args.repair and is_embedded(args.kv),
                    must_exist=True) as store:
        report = check_store(store, repair=args.repair)
    out = report.to_dict()
    if args.json_out:
        write_json(args.json_out, out)
    for p in report.problems:
        print(f"{'repaired' if p.repaired else 'PROBLEM '}  {p.kind:<18} {p.detail}")
    verdict = "ok" if report.ok else f"{out['unrepaired']} problem(s) left"
    print(f"{report.records} records, embeddings {report.models}: {verdict}")
    return 0 if report.ok else 1
