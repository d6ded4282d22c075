"""The ``imgsim`` command line.

Each subcommand is one module of this package (``imgsim_lab/cli/<name>.py``) that defines
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; modules are
discovered, so adding a subcommand is adding a file.

Cold start: only the module of the command given is imported. ``imgsim --help`` imports
none: it reads each module's ``NAME``/``HELP`` string constants from its source.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import logging
import pkgutil
import sys
from pathlib import Path

from imgsim_lab.log import setup_logging

log = logging.getLogger(__name__)


def discover(package_path, package_name: str, wanted: str | None = None) -> list:
    """Import the modules of a package (all, or only the one named ``wanted``).

    Importing only the command asked for keeps ``imgsim info`` from loading torch.
    """
    names = [i.name for i in pkgutil.iter_modules(package_path) if not i.name.startswith("_")]
    if wanted is not None and wanted.replace("-", "_") in names:
        names = [wanted.replace("-", "_")]
    mods = [importlib.import_module(f"{package_name}.{n}") for n in names]
    return sorted(mods, key=lambda m: m.NAME)


def _first_positional(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def declared(package_path, wanted: str | None = None) -> list[tuple[str, str, str]]:
    """(module, NAME, HELP) of a package's modules, read from their source without importing.

    A module whose NAME or HELP is not a plain string constant is imported instead.
    """
    out = []
    for info in pkgutil.iter_modules(package_path):
        if info.name.startswith("_"):
            continue
        consts: dict[str, str] = {}
        try:
            tree = ast.parse(Path(info.module_finder.path, f"{info.name}.py").read_text("utf-8"))
            for node in tree.body:
                if (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and isinstance(node.targets[0], ast.Name)
                        and node.targets[0].id in ("NAME", "HELP")
                        and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                    consts[node.targets[0].id] = node.value.value
        except (OSError, SyntaxError, AttributeError):
            pass
        out.append((info.name, consts.get("NAME", ""), consts.get("HELP", "")))
    return sorted(out, key=lambda t: t[1] or t[0])


def _wanted_module(argv: list[str] | None) -> str | None:
    """The module of the subcommand on the command line (matched by NAME), else None."""
    if argv is None:
        return None
    first = _first_positional(argv)
    if first is None:
        return None
    for mod, name, _ in declared(__path__):
        if first in (name, mod, mod.replace("_", "-")):
            return mod
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsim", description="imgsim-lab image similarity workbench")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = _wanted_module(argv)
    if argv is not None and wanted is None and all(name and text for _, name, text in declared(__path__)):
        # no (known) subcommand: help or a usage error -- list them without importing any
        for _, name, text in declared(__path__):
            sub.add_parser(name, help=text, description=text)
        return parser
    for mod in discover(__path__, __name__, wanted):
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    setup_logging(f"imgsim-{args.command}", verbose=args.verbose)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - user mistakes become one line, bugs keep their traceback
        message = user_error_message(exc)
        if message is None:
            raise
        if args.verbose:
            log.exception("imgsim %s failed", args.command)
        else:
            log.debug("imgsim %s failed", args.command, exc_info=True)  # the log file keeps it
        print(f"imgsim {args.command}: {message}", file=sys.stderr, flush=True)
        return 2


def user_error_message(exc: BaseException) -> str | None:
    """The one line shown for a user mistake, or None for an unexpected error (a bug)."""
    from imgsim_lab.cli._common import UsageError
    from imgsim_lab.store.errors import StoreError

    if isinstance(exc, (UsageError, StoreError)):
        return str(exc)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return str(exc) if not exc.filename else f"{exc.strerror or exc}: {exc.filename}"
    if type(exc).__name__ in ("ModelUnavailableError", "Cifar10SourceError"):
        return str(exc)
    return None


if __name__ == "__main__":
    sys.exit(main())
