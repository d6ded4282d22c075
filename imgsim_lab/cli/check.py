"""``imgsim check``: verify the store's invariants; ``--repair`` fixes what is safe."""

from __future__ import annotations

import argparse

from imgsim_lab.cli._common import add_store_args, write_json

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
    with open_store(args.kv, args.namespace, read_only=not args.repair and _embedded(args.kv),
                    must_exist=True) as store:
        report = check_store(store, repair=args.repair)
    out = report.to_dict()
    write_json(out, args.json_out)
    for p in report.problems:
        print(f"{'repaired' if p.repaired else 'PROBLEM '}  {p.kind:<18} {p.detail}")
    verdict = "ok" if report.ok else f"{out['unrepaired']} problem(s) left"
    print(f"{report.records} records, embeddings {report.models}: {verdict}")
    return 0 if report.ok else 1


def _embedded(url: str | None) -> bool:
    from imgsim_lab import config
    from imgsim_lab.store import parse_url

    return parse_url(config.kv_url(url))[0] == "rocksdb"
