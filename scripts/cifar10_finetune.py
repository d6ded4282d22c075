"""Full-protocol CIFAR-10 partial fine-tuning of EfficientNet-Lite on cached trunk activations.

Database = all 50,000 train images, queries = all 10,000 test images. The trunk (stem and
blocks ``[:start]``) runs once per image through ONNX Runtime and its activations are cached
as float16 ``.npy`` files in ``--cache`` (reused on later runs; caching is timed and reported
separately). The last ``--blocks`` blocks, the head conv and an adapter head are then trained
on the train split only (10 % of it held out for early stopping), and the test split is only
embedded and ranked (:mod:`imgsim_lab.adapters.finetune`).

    python scripts/cifar10_finetune.py --cache /work/cache/ft --blocks 2 --flip \
        --json docs/results/issue18/cifar10_finetune.json

Several ``--blocks`` values run one after the other on the same cache. Results are merged
into ``--json`` by row name.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from imgsim_lab.adapters import finetune as ft
from imgsim_lab.adapters.evaluate import itq, ranking_metrics, sign_codes
from imgsim_lab.adapters.training import config_dict
from imgsim_lab.datasets import CIFAR10_CLASSES, cifar10_zip_images
from imgsim_lab.jsonio import write_json
from imgsim_lab.models.registry import get_model

log = logging.getLogger("cifar10_finetune")


def cached(path: Path, make) -> tuple[np.ndarray, float]:
    """The array at ``path`` (``np.load`` without pickle), else ``make()`` saved there."""
    if path.is_file():
        return np.load(path, allow_pickle=False), 0.0
    t0 = time.perf_counter()
    arr = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    tmp.replace(path)
    return arr, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--start", type=int, default=11, help="block the cache starts at")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--archive", default=None, help="CIFAR-10 zip (default: the configured one)")
    ap.add_argument("--blocks", type=int, action="append", default=None)
    ap.add_argument("--flip", action="store_true", help="cache and use mirrored views too")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tail-lr", type=float, default=2e-4)
    ap.add_argument("--loss", default="cos_softmax")
    ap.add_argument("--kind", default="mlp")
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-db", type=int, default=20000,
                    help="training images the validation queries are ranked against each epoch")
    ap.add_argument("--no-codes", action="store_true", help="skip the 48/64-bit sign codes")
    ap.add_argument("--stride", type=int, default=1, help="use every N-th image (quick runs)")
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--save-embeddings", type=Path, default=None,
                    help="also write the database/query embeddings and labels (.npz, for re-ranking studies)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    model = get_model(args.model, args.size)
    tag = f"{model.key}-b{args.start}"
    images = {s: cifar10_zip_images(s, args.archive) for s in ("train", "test")}
    y = {s: np.array([CIFAR10_CLASSES.index(c) for c, _ in images[s]], np.int64) for s in images}
    acts, cache_s = {}, {}
    for split in ("train", "test"):
        for flip in (False, True) if args.flip else (False,):
            name = f"{split}{'_flip' if flip else ''}"
            srcs = [b for _, b in images[split]]
            acts[name], cache_s[name] = cached(
                args.cache / f"{tag}-{name}.npy",
                lambda srcs=srcs, flip=flip: ft.cache_activations(model, srcs, args.start, flip=flip))
            log.info("%s: %s activations (%.0f s to cache)", name, acts[name].shape, cache_s[name])
    if args.stride > 1:  # a quick run on every stride-th image of each split
        acts = {k: v[::args.stride] for k, v in acts.items()}
        y = {k: v[::args.stride] for k, v in y.items()}
    out = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": {}}
    n_blocks = len(model._network()._blocks)
    for blocks in args.blocks or [2]:
        first = n_blocks - blocks  # carry every split to the tail's block once, for training and ranking
        t0 = time.perf_counter()
        views = {k: ft.advance(model, v, args.start, first) for k, v in acts.items()}
        advance_s = time.perf_counter() - t0
        cfg = ft.FinetuneConfig(blocks=blocks, epochs=args.epochs, batch_size=args.batch_size,
                                lr=args.lr, tail_lr=args.tail_lr, loss=args.loss, kind=args.kind,
                                patience=args.patience, threads=args.threads)
        res = ft.train_tail(model, views["train"], y["train"], first, cfg,
                            acts_flip=views.get("train_flip"), max_val_db=args.val_db)
        row = (f"{model.key} fine-tune last {blocks} blocks + {args.kind} {args.loss}"
               + (" (flip)" if args.flip else "") + f", up to {args.epochs} epochs")
        weights = args.json.with_name(f"{args.json.stem}-b{blocks}-e{args.epochs}.safetensors")
        save_file(res.weights(), str(weights))  # kept before the (long) evaluation
        log.info("%s: weights in %s; history %s", row, weights, res.history)
        t0 = time.perf_counter()
        db = res.embed(views["train"], views.get("train_flip"))
        q = res.embed(views["test"], views.get("test_flip"))
        embed_s = time.perf_counter() - t0
        if args.save_embeddings:
            np.savez(args.save_embeddings.with_name(f"{args.save_embeddings.stem}-b{blocks}.npz"),
                     db=db, db_y=y["train"], q=q, q_y=y["test"])
        metrics = ranking_metrics(db, y["train"], q, y["test"])
        codes = {}
        for bits in () if args.no_codes else (48, 64):
            mean, pca, rot = itq(db, bits)
            cdb, cq = sign_codes(db, mean, pca, rot), sign_codes(q, mean, pca, rot)
            codes[f"{bits}bit"] = ranking_metrics(cdb, y["train"], cq, y["test"])
        out["rows"][row] = {"config": config_dict(cfg), "start": args.start, "metrics": metrics,
                            "codes": codes, "history": res.history,
                            "training": {**res.summary(), "advance_seconds": round(advance_s, 2)},
                            "embed_seconds": round(embed_s, 1), "weights": weights.name,
                            "cache_seconds": {k: round(v, 1) for k, v in cache_s.items()},
                            "trained_on": "cifar10 train (50,000; 10 % held out for early stopping)",
                            "queries": "cifar10 test (10,000), never seen in training"}
        log.info("%s: mAP@1000 %.4f, P@1 %.4f, %.0f s training", row, metrics["mAP@1000"],
                 metrics["P@1"], res.seconds)
        write_json(args.json, out)


if __name__ == "__main__":
    main()
