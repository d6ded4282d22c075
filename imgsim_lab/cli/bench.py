"""``imgsim bench <name>``: benchmarks that print machine-readable JSON.

Each benchmark is one module of :mod:`imgsim_lab.bench` defining ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> dict``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

from imgsim_lab import bench
from imgsim_lab.cli._common import write_json

NAME = "bench"
HELP = "run a benchmark and print its JSON result (store, embed, ingest, search)"


def _benchmarks() -> list:
    mods = []
    for info in pkgutil.iter_modules(bench.__path__):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{bench.__name__}.{info.name}"))
    return sorted(mods, key=lambda m: m.NAME)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for mod in _benchmarks():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.add_argument("--json", dest="json_out", metavar="OUT", default=None,
                       help="also write the JSON result to this file")
        p.set_defaults(_bench=mod.run)


def run(args: argparse.Namespace) -> int:
    result = args._bench(args)
    print(write_json(result, args.json_out))
    return 0
