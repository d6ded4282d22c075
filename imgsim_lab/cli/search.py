"""``imgsim search IMAGE``: the top-k most similar stored images."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgsim_lab.cli._common import add_backend_arg, add_store_args, load_model, write_json
from imgsim_lab.store import open_store

NAME = "search"
HELP = "print the top-k stored images most similar to IMAGE (never IMAGE itself)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="an image file")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=None)
    add_backend_arg(parser)
    parser.add_argument("--k", type=int, default=5)
    add_store_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from imgsim_lab.cli.info import _read_only
    from imgsim_lab.images import ImageRejected
    from imgsim_lab.search import Searcher

    data = args.image.read_bytes()
    with open_store(args.kv, args.namespace, read_only=_read_only(args.kv)) as store:
        searcher = Searcher(store, load_model(args.model, args.size, args.backend))
        try:
            result = searcher.search_bytes(data, k=args.k, source=str(args.image))
        except ImageRejected as exc:
            print(f"rejected {args.image}: {exc}")
            return 1
    out = result.to_dict()
    out["query"] = str(args.image)
    if args.json:
        print(write_json(out, None))
        return 0
    state = f"stored as id {result.stored_id}" if result.duplicate else "not stored"
    print(f"{args.image} ({result.info.width}x{result.info.height}, {state}); "
          f"top {len(result.matches)} by cosine ({searcher.model.key}):")
    for rank, m in enumerate(result.matches, 1):
        d = m.to_dict()
        print(f"{rank:>3}  id {d['id']:>8}  score {d['score']:.4f}  "
              f"label {d['label'] or '-':<12} {d['source']}")
    return 0
