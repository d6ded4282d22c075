"""Store cached vectors (an ``.npz`` of ``train_x``/``train_paths``…) as a model's embeddings.

Lets ``imgsim adapter train``, search and the benchmark run on the full 50,000-image
database without re-embedding it: each file is hashed and added as a record (label = its
class folder, source = ``<dataset>/<split>/<class>/<name>``, e.g. ``cifar10/train/cat/0001.jpg`` or
``fashion-mnist/train/coat/00001.png``, like ``imgsim ingest``) with the
cached vector under ``--model`` at the version the model has in this code (checked by
building the model), so later ingests and searches agree with it.

    python scripts/load_cached_vectors.py /work/cache/cifar10_lite0_160.npz --model efficientnet_lite0 \
        --split train --kv rocksdb:data/kv --namespace cifar10-full
    python scripts/load_cached_vectors.py /work/cache/fmnist_lite0_160.npz --model efficientnet_lite0 \
        --split train --kv rocksdb:data/kv --namespace fashion-mnist
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from imgsim_lab.models import get_model
from imgsim_lab.store import NewImage, open_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("npz")
    ap.add_argument("--model", required=True, help="registered model name (its default size)")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--split", default="train", choices=("train", "test"))
    ap.add_argument("--kv", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    m = get_model(args.model, size=args.size)
    z = np.load(args.npz)
    x, paths = z[f"{args.split}_x"], z[f"{args.split}_paths"]
    if x.shape[1] != m.dim:
        raise SystemExit(f"cached vectors are {x.shape[1]}-d, {m.key} is {m.dim}-d")
    n = len(paths) if args.limit is None else min(args.limit, len(paths))
    with open_store(args.kv, args.namespace) as store:
        store.register_model(m.key, m.dim, m.version)
        batch = []
        for i in tqdm(range(n), desc=f"load {m.key}", unit="img"):
            p = Path(str(paths[i]))
            data = p.read_bytes()
            with Image.open(p) as im:
                w, h = im.size
            source = f"{p.parents[2].name}/{args.split}/{p.parent.name}/{p.name}"  # <dataset>/<split>/…
            batch.append(NewImage(hashlib.sha256(data).hexdigest(), source, w, h, p.parent.name,
                                  {m.key: np.ascontiguousarray(x[i], np.float32)}))
            if len(batch) == 1024:
                store.add_images(batch)
                batch = []
        if batch:
            store.add_images(batch)
        print(store.info())


if __name__ == "__main__":
    main()
