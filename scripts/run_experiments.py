#!/usr/bin/env python
"""Run experiment grids: ``scripts/run_experiments.py experiments/NAME.yaml [...]``.

The same as ``imgsim experiments run experiments/NAME.yaml``; several files run in turn.
Exit status 1 when any cell of any experiment failed.
"""

from __future__ import annotations

import argparse
import sys

from imgsim_lab.cli import experiments as cli
from imgsim_lab.log import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    cli.add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("run", "list", "summary"):
        argv = ["run", *argv]
    # several files: run each with the same options
    files = [a for a in argv[1:] if a.endswith((".yaml", ".yml"))]
    rest = [a for a in argv[1:] if a not in files]
    setup_logging("experiments")
    rc = 0
    for f in files or [None]:
        args = parser.parse_args([argv[0], f, *rest] if f else argv)
        rc = max(rc, cli.run(args))
    return rc


if __name__ == "__main__":
    sys.exit(main())
