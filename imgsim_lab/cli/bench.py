"""``imgsim bench <name>``: benchmarks that print machine-readable JSON.

Each benchmark is one module of :mod:`imgsim_lab.bench` defining ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> dict`` (``STORE_ARGS = True``: this module adds
``--kv``/``--namespace``; bench modules never import the CLI). Only the benchmark asked for is
imported (``bench store`` does not load torch): its arguments are parsed when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil

from imgsim_lab import bench
from imgsim_lab.cli._common import add_store_args
from imgsim_lab.jsonio import dumps, write_json

NAME = "bench"
HELP = "run a benchmark and print its JSON result (store, embed, ingest, search)"


def benchmark_names() -> list[str]:
    """The benchmarks available, found without importing them."""
    return sorted(i.name.replace("_", "-") for i in pkgutil.iter_modules(bench.__path__)
                  if not i.name.startswith("_"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=benchmark_names(),
                        help="which benchmark (`imgsim bench NAME --help` lists its options)")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")


def benchmark_parser(name: str):
    """The argument parser of one benchmark, and its module."""
    mod = importlib.import_module(f"{bench.__name__}.{name.replace('-', '_')}")  # cold-start: cold_start
    p = argparse.ArgumentParser(prog=f"imgsim bench {mod.NAME}", description=mod.HELP)
    mod.add_arguments(p)
    if getattr(mod, "STORE_ARGS", False):
        add_store_args(p)
    p.add_argument("--json", dest="json_out", metavar="OUT", default=None,
                   help="also write the JSON result to this file")
    return p, mod


def run(args: argparse.Namespace) -> int:
    parser, mod = benchmark_parser(args.benchmark)
    bench_args = parser.parse_args(args.options)
    bench_args.verbose = getattr(args, "verbose", False)
    result = mod.run(bench_args)
    print(write_json(bench_args.json_out, result) if bench_args.json_out else dumps(result))
    return 0
