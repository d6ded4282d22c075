#!/usr/bin/env python
"""Set up CIFAR-10 under data/cifar10 (same as ``imgsim setup-cifar10``)."""

from __future__ import annotations

import argparse
import sys

from imgsim_lab.cli import setup_cifar10 as command
from imgsim_lab.log import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=command.HELP)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    command.add_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging("imgsim-setup-cifar10", verbose=args.verbose)
    return command.run(args)


if __name__ == "__main__":
    sys.exit(main())
