"""``imgsim info``: what the store holds."""

from __future__ import annotations

import argparse

from imgsim_lab.cli._common import add_store_args, is_embedded
from imgsim_lab.jsonio import dumps
from imgsim_lab.store import open_store

NAME = "info"
HELP = "print what the store holds (images, models with dim and count)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_store_args(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON object")


def run(args: argparse.Namespace) -> int:
    with open_store(args.kv, args.namespace, read_only=is_embedded(args.kv), must_exist=True) as store:
        info = store.info()
        others = other_namespaces(store) if not info["images"] else []
    if others:
        info["other_namespaces"] = dict(others)
    if args.json:
        print(dumps(info))
        return 0
    kind = info['backend'] + (f", {info['server']}" if 'server' in info else '')
    print(f"store      {info['url']} ({kind}), namespace {info['namespace']}")
    print(f"images     {info['images']} (last id {info['last_id']})")
    if not info["images"] and others:
        print(f"note       namespace {info['namespace']!r} is empty; this store has data in: "
              + ", ".join(f"{ns} ({n} images)" for ns, n in others)
              + f". Choose one with --namespace NS (e.g. imgsim info --namespace {others[0][0]})")
    if not info["models"]:
        print("models     none yet")
    for name, m in sorted(info["models"].items()):
        print(f"model      {name}: {m['count']} embeddings, dim {m['dim']}, version {m['version']}")
    return 0


def other_namespaces(store, limit: int = 20) -> list[tuple[str, int]]:
    """Other namespaces of the same store holding images, ``(name, images)``, largest first
    (one scan of the keys: only run when the chosen namespace is empty)."""
    counts = [(ns, n) for ns, n in store.namespaces().items() if n and ns != store.namespace]
    return sorted(counts, key=lambda t: (-t[1], t[0]))[:limit]
