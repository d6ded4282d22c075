"""``imgsim bench <name>``: benchmarks that print machine-readable JSON.

Each benchmark is one module of :mod:`imgsim_lab.bench` defining ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> dict``.
"""

from __future__ import annotations

import argparse
import sys

from imgsim_lab import bench
from imgsim_lab.cli._common import write_json

NAME = "bench"
HELP = "run a benchmark and print its JSON result (store, embed, ingest, search)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from imgsim_lab.cli import discover

    sub = parser.add_subparsers(dest="benchmark", required=True)
    argv = sys.argv[1:]
    wanted = argv[argv.index(NAME) + 1] if NAME in argv and argv.index(NAME) + 1 < len(argv) else None
    for mod in discover(bench.__path__, bench.__name__, wanted):
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.add_argument("--json", dest="json_out", metavar="OUT", default=None,
                       help="also write the JSON result to this file")
        p.set_defaults(_bench=mod.run)


def run(args: argparse.Namespace) -> int:
    result = args._bench(args)
    print(write_json(result, args.json_out))
    return 0
