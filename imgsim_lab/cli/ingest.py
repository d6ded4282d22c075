"""``imgsim ingest SOURCE``: validate, hash, embed and store a collection of images."""

from __future__ import annotations

import argparse
import logging

from imgsim_lab.cli._common import (
    UsageError,
    add_backend_arg,
    add_limit_args,
    add_store_args,
    load_model,
    positive_int,
)
from imgsim_lab.jsonio import dumps, write_json
from imgsim_lab.scaleout.cluster import dask_address_arg
from imgsim_lab.store import open_store

NAME = "ingest"
HELP = "add images (cifar10:train, cifar10:test or a folder) to the store, embedded by each --model"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="cifar10:train | cifar10:test | a folder of images")
    parser.add_argument("--model", action="append", default=None,
                        help="model name (repeat for several; default efficientnet_lite0)")
    parser.add_argument("--size", type=positive_int, default=None,
                        help="input size in pixels (default: the model's)")
    add_backend_arg(parser)
    add_store_args(parser)
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N images (class-balanced for CIFAR-10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="images per forward batch (default 64)")
    parser.add_argument("--label-from-parent", action=argparse.BooleanOptionalAction, default=True,
                        help="a folder image's label is its parent folder's name (default on)")
    add_limit_args(parser)
    parser.add_argument("--no-index", action="store_true", help="do not update the search index")
    parser.add_argument("--json", dest="json_out", metavar="OUT", default=None,
                        help="also write the full summary as JSON to OUT ('-': print only the JSON)")
    parser.add_argument("--dask", metavar="ADDRESS", default=None, type=dask_address_arg,
                        help="embed on a Dask cluster: local:N (N single-thread worker processes) "
                             "or tcp://HOST:8786 (see docs/scale-out.md)")
    parser.add_argument("--partition-size", type=int, default=256,
                        help="images per Dask task with --dask (default 256)")


def load_items(args: argparse.Namespace) -> list:
    """The items of ``args.source``; a bad source is a :class:`UsageError`."""
    from imgsim_lab.datasets import SPLITS, items_from_source

    src = str(args.source)
    if src.startswith("cifar10:") and src.partition(":")[2] not in SPLITS:
        raise UsageError(f"unknown CIFAR-10 split {src.partition(':')[2]!r}: use "
                         + " or ".join(f"cifar10:{s}" for s in SPLITS))
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be >= 0")
    return items_from_source(args.source, limit=args.limit, seed=args.seed,
                             label_from_parent=args.label_from_parent)


def summary_lines(result: dict) -> list[str]:
    """A short human summary of an ingest run (the JSON has everything)."""
    rej = result.get("rejected") or {}
    rejected = f"{result['rejected_total']} rejected" + (
        f" ({', '.join(f'{n} {r}' for r, n in sorted(rej.items()))})" if rej else "")
    lines = [f"ingested {result['seen']} images into {result['store']} (namespace {result['namespace']}) "
             f"with {', '.join(result['models'])}",
             f"  {result['added']} added, {result['duplicates']} duplicates, {rejected}, "
             f"{result['embedded']} embedded with a new model",
             f"  {result['seconds']:.1f} s, {result['images_per_s']:.1f} images/s"]
    for key, st in (result.get("index") or {}).items():
        lines.append(f"  index {key}: {st.get('mode')}, {st.get('ntotal')} vectors")
    return lines


def run(args: argparse.Namespace) -> int:
    from imgsim_lab.images import Limits
    from imgsim_lab.ingest import ingest

    models = [load_model(name, args.size, args.backend) for name in (args.model or ["efficientnet_lite0"])]
    items = load_items(args)
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels)
    with open_store(args.kv, args.namespace) as store:
        if args.dask:
            from imgsim_lab.config import kv_url
            from imgsim_lab.scaleout.cluster import dask_client
            from imgsim_lab.scaleout.ingest import dask_ingest

            with dask_client(args.dask) as client:
                summary = dask_ingest(items, store, models, client=client, kv_url=kv_url(args.kv),
                                      batch_size=args.batch_size, limits=limits,
                                      partition_size=args.partition_size)
        else:
            summary = ingest(items, store, models, batch_size=args.batch_size, limits=limits)
        result = summary.to_dict()
        if not args.no_index:
            from imgsim_lab.index import SimilarityIndex

            result["index"] = {}
            for m in models:
                idx = SimilarityIndex(store, m.key)  # loads or builds, catches up, saves once
                result["index"][m.key] = idx.stats()
    if args.json_out == "-":  # for scripts: the JSON alone on stdout
        print(dumps(result))
        return no_valid_input(result)
    if args.json_out:
        write_json(args.json_out, result)
    print("\n".join(summary_lines(result)))
    if args.json_out:
        print(f"  summary written to {args.json_out}")
    return no_valid_input(result)


#: Exit status of ``imgsim ingest`` when not a single input was a valid image.
EXIT_NO_VALID_INPUT = 3


def no_valid_input(result: dict) -> int:
    """0, or :data:`EXIT_NO_VALID_INPUT` (with a line on stderr) when every input was rejected."""
    import sys

    if result["seen"] - result["rejected_total"] > 0:
        return 0
    print(f"imgsim ingest: not a single valid image among {result['seen']} input(s); "
          "nothing was stored (see the rejection reasons above)", file=sys.stderr)
    return EXIT_NO_VALID_INPUT
