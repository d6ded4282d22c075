"""The ``imgsim`` command line.

Each subcommand is one module of this package (``imgsim_lab/cli/<name>.py``) that defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; modules are
discovered, so adding a subcommand is adding a file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from imgsim_lab.log import setup_logging

log = logging.getLogger(__name__)


def _commands() -> list:
    mods = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsim", description="imgsim-lab image similarity workbench")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(f"imgsim-{args.command}", verbose=args.verbose)
    from imgsim_lab.store.errors import StoreError

    try:
        return int(args._run(args) or 0)
    except StoreError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
