"""``imgsim search IMAGE``: the top-k most similar stored images."""

from __future__ import annotations

import argparse
from pathlib import Path

from imgsim_lab.cli._common import (
    UsageError,
    add_backend_arg,
    add_store_args,
    is_embedded,
    load_model,
    positive_int,
    require_stored_model,
)
from imgsim_lab.jsonio import dumps
from imgsim_lab.store import open_store

NAME = "search"
HELP = "print the top-k stored images most similar to IMAGE (never IMAGE itself)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="an image file")
    parser.add_argument("--model", default="efficientnet_lite0",
                        help="model name (default efficientnet_lite0)")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="input size in pixels (default: the model's)")
    add_backend_arg(parser)
    parser.add_argument("--k", type=positive_int, default=5, help="how many results (default 5)")
    parser.add_argument("--expand", type=int, default=0, metavar="N",
                        help="query expansion (αQE): re-search with the query moved towards its "
                             "top N results (default 0: off)")
    parser.add_argument("--alpha", type=float, default=3.0,
                        help="αQE weight exponent: a result of cosine s weighs s**alpha (default 3)")
    add_store_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")


def read_query(path: Path) -> bytes:
    """The query file's bytes; a missing file or a folder is a :class:`UsageError`."""
    if path.is_dir():
        raise UsageError(f"{path} is a folder: search takes one image file, e.g. "
                         f"imgsim search {path}/IMAGE.jpg")
    if not path.is_file():
        raise UsageError(f"no such image file: {path}")
    return path.read_bytes()


def openable_path(record, data_dir: Path) -> str:
    """Where a result's file is on disk (absolute), or what is known of it and that it is gone."""
    from imgsim_lab.datasets import locate

    found = locate(record.source, record.path, data_dir)
    if found.path is not None:
        return str(found.path.resolve())
    return f"{found.missing or record.source} (file not found: moved or deleted?)"


def run(args: argparse.Namespace) -> int:
    from imgsim_lab import config
    from imgsim_lab.expansion import ExpansionConfig
    from imgsim_lab.images import ImageRejected
    from imgsim_lab.messages import describe_rejection
    from imgsim_lab.search import Searcher

    try:
        expansion = ExpansionConfig(args.expand, args.alpha)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    data = read_query(args.image)
    with open_store(args.kv, args.namespace, read_only=is_embedded(args.kv),
                    must_exist=True) as store:
        from imgsim_lab.models import available_models

        known = available_models()
        if args.model not in known:
            raise UsageError(f"unknown model {args.model!r}; available: {', '.join(known)}")
        stored = store.model_info()
        if not any(k == args.model or k.startswith(f"{args.model}_") for k in stored):
            require_stored_model(store, args.model, args.kv)  # refuses before building the model
        model = load_model(args.model, args.size, args.backend)
        require_stored_model(store, model.key, args.kv)
        searcher = Searcher(store, model, expansion=expansion)
        try:
            result = searcher.search_bytes(data, k=args.k, source=str(args.image))
        except ImageRejected as exc:
            raise UsageError(f"{args.image} was rejected: {describe_rejection(exc)}") from exc
    data_dir = config.data_dir()
    out = result.to_dict()
    out["query"] = str(args.image)
    if expansion.enabled:
        out["expansion"] = {"n": expansion.n, "alpha": expansion.alpha}
    for d, m in zip(out["matches"], result.matches, strict=True):
        d["path"] = openable_path(m.record, data_dir) if m.record else None
    if args.json:
        print(dumps(out))
        return 0
    state = f"stored as id {result.stored_id}" if result.duplicate else "not stored"
    print(f"{args.image} ({result.info.width}x{result.info.height}, {state}); "
          f"top {len(result.matches)} by cosine ({searcher.model.key}"
          + (f", αQE n={expansion.n} alpha={expansion.alpha:g}" if expansion.enabled else "") + "):")
    for rank, d in enumerate(out["matches"], 1):
        print(f"{rank:>3}  id {d['id']:>8}  score {d['score']:.4f}  "
              f"label {d['label'] or '-':<12} {d['path'] or d['source']}")
    return 0
