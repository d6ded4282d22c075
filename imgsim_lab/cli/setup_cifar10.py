"""``imgsim setup-cifar10``: put CIFAR-10 under ``<data>/cifar10`` once."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imgsim_lab.datasets import ENV_CIFAR10_SOURCE, Cifar10SourceError, setup_cifar10

NAME = "setup-cifar10"
HELP = "set up CIFAR-10 under <data>/cifar10 from a local archive or a torchvision download"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", metavar="PATH", default=None,
                        help="cifar10-jpeg.zip or cifar-10-python.tar.gz (default: "
                             f"${ENV_CIFAR10_SOURCE}, else ../shared/datasets/cifar10-jpeg.zip, "
                             "else download with torchvision)")
    parser.add_argument("--dest", metavar="DIR", default=None,
                        help="target directory (default: <data>/cifar10)")
    parser.add_argument("--force", action="store_true",
                        help="set up again even if already complete")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        summary = setup_cifar10(dest=Path(args.dest) if args.dest else None, source=args.source,
                                progress=not args.no_progress, force=args.force)
    except (Cifar10SourceError, FileExistsError) as exc:
        log.error("%s", exc)
        return 2
    counts = summary["counts"] or {}
    state = "already set up" if summary["skipped"] else "set up"
    print(f"CIFAR-10 {state} in {summary['dest']}: {counts.get('train')} train, "
          f"{counts.get('test')} test ({'full' if summary['full'] else 'partial'}, "
          f"source {summary['source']}, {summary['seconds']:.1f} s)")
    return 0
