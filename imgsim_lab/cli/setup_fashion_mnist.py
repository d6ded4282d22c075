"""``imgsim setup-fashion-mnist``: write Fashion-MNIST as PNG files under ``<data>/fashion-mnist`` once."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

NAME = "setup-fashion-mnist"
HELP = "set up Fashion-MNIST under <data>/fashion-mnist from the idx files of dataset-fashion-mnist"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", metavar="DIR", default=None,
                        help="directory with {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
                             "(default: /usr/share/datasets/fashion-mnist, from the Debian package "
                             "dataset-fashion-mnist)")
    parser.add_argument("--dest", metavar="DIR", default=None,
                        help="target directory (default: <data>/fashion-mnist)")
    parser.add_argument("--force", action="store_true", help="set up again even if already complete")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from imgsim_lab.fashion_mnist import FashionMnistSourceError, setup_fashion_mnist

    try:
        summary = setup_fashion_mnist(dest=Path(args.dest) if args.dest else None, source=args.source,
                                      progress=not args.no_progress, force=args.force)
    except (FashionMnistSourceError, FileExistsError) as exc:
        log.error("%s", exc)
        return 2
    counts = summary["counts"]
    state = "already set up" if summary["skipped"] else "set up"
    print(f"Fashion-MNIST {state} in {summary['dest']}: {counts['train']} train, {counts['test']} test "
          f"({'full' if summary['full'] else 'partial'}, source {summary['source']}, "
          f"{summary['seconds']:.1f} s)")
    return 0
