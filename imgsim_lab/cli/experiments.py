"""``imgsim experiments run|list|summary FILE.yaml``: papermill experiment grids."""

from __future__ import annotations

import argparse
import logging

from imgsim_lab.scaleout.cluster import dask_address_arg

NAME = "experiments"
HELP = "run an experiment grid (experiments/NAME.yaml) with papermill, or list its cells"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("run", "list", "summary"),
                        help="run the cells (skipping finished ones), list them, or rebuild the summary")
    parser.add_argument("file", help="experiment definition, e.g. experiments/cifar10_models.yaml")
    parser.add_argument("--force", action="store_true", help="rerun cells that are done already")
    parser.add_argument("--only", action="append", default=None, metavar="CELL",
                        help="run only this cell (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter for every cell (YAML value, e.g. db_size=50000); "
                             "results go to a separate run directory")
    parser.add_argument("--runs-dir", default=None, help="where runs go (default experiments/runs)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="per notebook cell execution timeout in seconds (default none)")
    parser.add_argument("--dask", metavar="ADDRESS", default=None, type=dask_address_arg,
                        help="run cells in parallel on a Dask cluster: local:N or tcp://HOST:8786 "
                             "(see docs/scale-out.md)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from imgsim_lab.experiments.grid import apply_overrides, load_experiment, parse_override
    from imgsim_lab.experiments.runner import default_runs_dir, run_experiment, write_summary

    exp = apply_overrides(load_experiment(args.file), dict(parse_override(o) for o in args.overrides))
    runs_dir = Path(args.runs_dir) if args.runs_dir else default_runs_dir()
    if args.action == "list":
        for cell in exp.cells():
            print(f"{cell.name}\t{cell.params}")
        return 0
    if args.action == "summary":
        print(write_summary(exp, (runs_dir / exp.name).resolve()))
        return 0
    if args.dask:
        from imgsim_lab.experiments.dask_grid import run_experiment_dask
        from imgsim_lab.scaleout.cluster import dask_client

        with dask_client(args.dask) as client:
            report = run_experiment_dask(exp, client, runs_dir, force=args.force, only=args.only,
                                         timeout=args.timeout)
    else:
        report = run_experiment(exp, runs_dir, force=args.force, only=args.only, timeout=args.timeout)
    print(report.summary_md)
    for o in report.outcomes:
        print(f"{o.status:8s} {o.name} {o.seconds:.0f}s {o.error}")
    if report.failed:
        print(f"{len(report.failed)} of {len(report.outcomes)} cells failed: "
              f"{', '.join(o.name for o in report.failed)}")
    print(f"results: {report.directory}")
    return report.exit_code
