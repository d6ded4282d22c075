"""``imgsim flush``: remove one namespace of the store."""

from __future__ import annotations

import argparse
import logging
import sys

from imgsim_lab.cli._common import add_store_args
from imgsim_lab.index.snapshot import remove_namespace
from imgsim_lab.store import open_store

NAME = "flush"
HELP = "remove every key of one namespace (asks for confirmation unless --yes)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_args(parser)
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def run(args: argparse.Namespace) -> int:
    with open_store(args.kv, args.namespace) as store:
        what = f"namespace {store.namespace!r} of {store.url} ({store.count()} images)"
        if not args.yes:
            if not sys.stdin.isatty():
                print(f"refusing to flush {what} without --yes (no terminal to confirm)", file=sys.stderr)
                return 1
            answer = input(f"Remove {what}? Type the namespace to confirm: ")
            if answer.strip() != store.namespace:
                print("not flushed")
                return 1
        removed = store.flush()
        remove_namespace(store)  # its index snapshots describe what was just removed
    log.info("flushed %s: %d keys removed", what, removed)
    print(f"removed {removed} keys from {what}")
    return 0
