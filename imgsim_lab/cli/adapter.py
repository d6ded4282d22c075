"""``imgsim adapter``: derived models — train adapters, fit transforms, derive, list, delete."""

from __future__ import annotations

import argparse
import logging

from imgsim_lab.cli._common import add_store_args
from imgsim_lab.jsonio import dumps, write_json

NAME = "adapter"
HELP = ("derived models on stored embeddings: train an adapter head, fit centring/whitening/"
        "concatenation, (re)derive vectors, list, delete")
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)

    t = sub.add_parser("train", help="train an adapter head on BASE's stored vectors and labels "
                                     "(stored as BASE+NAME)")
    t.add_argument("name", help="the adapter's name (key: BASE+NAME)")
    t.add_argument("--base", required=True, help="stored base model key, e.g. efficientnet_lite0")
    t.add_argument("--kind", choices=("linear", "mlp"), default="mlp")
    t.add_argument("--dim", type=int, default=256, help="output dimension (default 256)")
    t.add_argument("--hidden", type=int, default=1024, help="MLP hidden width (default 1024)")
    t.add_argument("--loss", choices=("cos_softmax", "proxy_anchor", "supcon"), default="cos_softmax")
    t.add_argument("--epochs", type=int, default=30, help="at most this many epochs (default 30)")
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--patience", type=int, default=4, help="early-stopping patience in epochs")
    t.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training records held out for early stopping")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: small heads train fastest on one; on a shared "
                        "machine two threads ran 5x slower here)")
    _common_fit_args(t)

    f = sub.add_parser("fit", help="fit a training-free transform: center, whiten or concat")
    f.add_argument("name", help="the transform's name (key: FIRST_BASE+NAME)")
    f.add_argument("--kind", choices=("center", "whiten", "concat"), required=True)
    f.add_argument("--base", action="append", required=True,
                   help="base model key (repeat for concat: --base a --base b)")
    f.add_argument("--dim", type=int, default=None, help="whiten: output dimension (default: all)")
    f.add_argument("--shrinkage", type=float, default=0.0,
                   help="whiten: shrink eigenvalues towards their mean, 0 (full) .. 1 (PCA only)")
    f.add_argument("--weight", type=float, action="append", default=None,
                   help="concat: weight of each base, in --base order (default 1 each)")
    _common_fit_args(f)

    d = sub.add_parser("derive", help="compute missing vectors of derived models from stored base vectors")
    d.add_argument("key", nargs="*", help="derived model keys (default: all)")
    add_store_args(d)

    ls = sub.add_parser("list", help="derived models of the namespace")
    add_store_args(ls)
    ls.add_argument("--json", dest="json_out", metavar="OUT", default=None)

    rm = sub.add_parser("delete", help="delete a derived model and its vectors")
    rm.add_argument("key")
    rm.add_argument("--cascade", action="store_true", help="also delete derived models built on it")
    add_store_args(rm)


def _common_fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-on", choices=("auto", "train", "all"), default="auto",
                   help="records to fit on: auto (the train split if there is one), train, all")
    p.add_argument("--replace", action="store_true", help="delete an existing model of that key first")
    p.add_argument("--out", default=None, help="directory for weights, spec and plot "
                                               "(default data/adapters/<namespace>)")
    p.add_argument("--json", dest="json_out", metavar="OUT", default=None,
                   help="write the spec and training metrics as JSON to OUT")
    add_store_args(p)


def _out_dir(args: argparse.Namespace, namespace: str):
    from imgsim_lab import config

    return args.out or config.data_dir() / "adapters" / namespace


def run(args: argparse.Namespace) -> int:
    from imgsim_lab import adapters
    from imgsim_lab.store import open_store

    read_only = args.action == "list"
    try:
        with open_store(args.kv, args.namespace, read_only=read_only and _embedded_exists(args.kv)) as store:
            if args.action == "train":
                from imgsim_lab.adapters.training import TrainConfig

                cfg = TrainConfig(kind=args.kind, dim=args.dim, hidden=args.hidden, loss=args.loss,
                                  epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                  patience=args.patience, val_fraction=args.val_fraction, seed=args.seed,
                                  threads=args.threads)
                spec = adapters.train_adapter(store, args.name, args.base, cfg, train_on=args.train_on,
                                              out_dir=_out_dir(args, store.namespace), replace=args.replace)
                return _report(spec, args.json_out)
            if args.action == "fit":
                spec = adapters.fit_transform(store, args.name, args.kind, args.base, dim=args.dim,
                                              shrinkage=args.shrinkage, weights=args.weight,
                                              train_on=args.train_on,
                                              out_dir=_out_dir(args, store.namespace), replace=args.replace)
                return _report(spec, args.json_out)
            if args.action == "derive":
                keys = args.key or adapters.list_derived(store)
                done = {k: adapters.derive(store, k, progress=True) for k in keys}
                print(dumps({"derived": done}))
                return 0
            if args.action == "list":
                rows = []
                models = store.model_info()
                for k in adapters.list_derived(store):
                    s = adapters.load_spec(store, k)
                    try:
                        adapters.check_bases(store, s)
                        state = "ok"
                    except adapters.StaleBaseError as exc:
                        state = f"stale: {exc}"
                    rows.append({"key": k, "kind": s.kind, "dim": s.dim, "version": s.version,
                                 "bases": [b.key for b in s.bases],
                                 "vectors": models[k].count if k in models else 0,
                                 "trained_on": s.trained_on.get("split"), "state": state})
                if args.json_out:
                    write_json(args.json_out, rows)
                for r in rows:
                    print(f"{r['key']}: {r['kind']} dim {r['dim']} {r['version']} on "
                          f"{'+'.join(r['bases'])}, {r['vectors']} vectors, fitted on "
                          f"{r['trained_on']} ({r['state']})")
                if not rows:
                    print("no derived models")
                return 0
            if args.action == "delete":
                removed = adapters.delete_derived(store, args.key, cascade=args.cascade)
                print(dumps({"deleted": removed}))
                return 0
    except adapters.DerivedModelError as exc:
        log.error("%s", exc)
        return 2
    return 1


def _report(spec, json_out: str | None) -> int:
    obj = {"key": spec.key, "kind": spec.kind, "dim": spec.dim, "version": spec.version,
           "bases": [b.__dict__ for b in spec.bases], "options": spec.options,
           "trained_on": spec.trained_on,
           "metrics": {k: v for k, v in spec.metrics.items() if k != "history"}}
    if json_out:
        write_json(json_out, {**obj, "history": spec.metrics.get("history", [])})
    print(dumps(obj))
    return 0


def _embedded_exists(url: str | None) -> bool:
    from pathlib import Path

    from imgsim_lab import config
    from imgsim_lab.store import parse_url

    scheme, target = parse_url(config.kv_url(url))
    return scheme == "rocksdb" and (Path(target) / "CURRENT").exists()
