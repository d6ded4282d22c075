"""``make demo``: the default CIFAR-10 experiment (experiments/demo.yaml), end to end."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from imgsim_lab.config import project_root as repo_root

log = logging.getLogger(__name__)

DEMO_FILE = "experiments/demo.yaml"
#: ``--full``: the whole protocol (all 50,000 train images as database, all 10,000 test queries).
FULL_OVERRIDES = {"db_size": None, "query_size": None}


def demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make demo", description="run the default CIFAR-10 experiment")
    p.add_argument("--full", action="store_true",
                   help="full protocol: 50,000 database and 10,000 query images (make demo FULL=1)")
    p.add_argument("--force", action="store_true", help="rerun cells that are done already")
    p.add_argument("--experiment", default=None, help=f"experiment file (default {DEMO_FILE})")
    p.add_argument("--runs-dir", default=None, help="where runs go (default experiments/runs)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. db_size=2000")
    return p


def demo_main(argv: list[str] | None = None) -> int:
    """Set CIFAR-10 up when needed, run the demo grid, print the summary; 1 if a cell failed."""
    from imgsim_lab.experiments.dataset import ensure_cifar10
    from imgsim_lab.experiments.grid import apply_overrides, load_experiment, parse_override
    from imgsim_lab.experiments.paths import resolve_data_dir
    from imgsim_lab.experiments.runner import run_experiment

    args = demo_parser().parse_args(argv)
    t0 = time.perf_counter()
    exp = load_experiment(Path(args.experiment) if args.experiment else repo_root() / DEMO_FILE)
    overrides = dict(FULL_OVERRIDES) if args.full else {}
    overrides.update(parse_override(o) for o in args.overrides)
    exp = apply_overrides(exp, overrides)
    if exp.params.get("dataset", "cifar10") == "cifar10":
        ensure_cifar10(resolve_data_dir(exp.params.get("data_dir")), exp.params.get("cifar10_source"))
    report = run_experiment(exp, Path(args.runs_dir) if args.runs_dir else None, force=args.force)
    print(report.summary_md)
    for o in report.outcomes:
        print(f"{o.status:8s} {o.name} {o.seconds:.0f}s {o.error}")
    print(f"results in {report.directory} (summary.md, summary.csv, <cell>/03_benchmark.ipynb, "
          f"<cell>/metrics.json); total {time.perf_counter() - t0:.0f}s")
    return report.exit_code
