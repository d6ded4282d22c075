"""``imgsim ingest SOURCE``: validate, hash, embed and store a collection of images."""

from __future__ import annotations

import argparse
import logging

from imgsim_lab.cli._common import add_store_args, write_json
from imgsim_lab.images import Limits
from imgsim_lab.scaleout.cluster import dask_address_arg
from imgsim_lab.store import open_store

NAME = "ingest"
HELP = "add images (cifar10:train, cifar10:test or a folder) to the store, embedded by each --model"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="cifar10:train | cifar10:test | a folder of images")
    parser.add_argument("--model", action="append", default=None,
                        help="model name (repeat for several; default efficientnet_lite0)")
    parser.add_argument("--size", type=int, default=None, help="input size in pixels (default: the model's)")
    add_store_args(parser)
    parser.add_argument("--limit", type=int, default=None,
                        help="at most N images (class-balanced for CIFAR-10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward batch (default 64)")
    parser.add_argument("--label-from-parent", action=argparse.BooleanOptionalAction, default=True,
                        help="a folder image's label is its parent folder's name (default on)")
    parser.add_argument("--max-bytes", type=int, default=Limits.max_bytes)
    parser.add_argument("--max-pixels", type=int, default=Limits.max_pixels)
    parser.add_argument("--no-index", action="store_true", help="do not update the search index")
    parser.add_argument("--json", dest="json_out", metavar="OUT", default=None,
                        help="write the summary as JSON to OUT")
    parser.add_argument("--dask", metavar="ADDRESS", default=None, type=dask_address_arg,
                        help="embed on a Dask cluster: local:N (N single-thread worker processes) "
                             "or tcp://HOST:8786 (see docs/scale-out.md)")
    parser.add_argument("--partition-size", type=int, default=256,
                        help="images per Dask task with --dask (default 256)")


def run(args: argparse.Namespace) -> int:
    from imgsim_lab.datasets import items_from_source
    from imgsim_lab.ingest import ingest
    from imgsim_lab.models import get_model
    models = [get_model(name, size=args.size) for name in (args.model or ["efficientnet_lite0"])]
    items = items_from_source(args.source, limit=args.limit, seed=args.seed,
                              label_from_parent=args.label_from_parent)
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
                idx = SimilarityIndex(store, m.key)
                idx.sync()
                idx.save()
                result["index"][m.key] = idx.stats()
    print(write_json(result, args.json_out))
    return 0
