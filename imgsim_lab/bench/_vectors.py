"""Real benchmark collections from precomputed embeddings (no re-embedding).

``write_npz_collection`` writes the rows of an ``.npz`` (``<split>_x`` float32 vectors,
``<split>_y`` labels, ``<split>_paths`` image paths) as records + embeddings through the
Store API, so ``imgsim bench search --model M`` and ``imgsim index tune`` run on real
vectors exactly as on an ingested collection. Idempotent: records are claimed by the
sha256 of the image file (or of its path when the file is absent).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from imgsim_lab.store import NewImage, Store

log = logging.getLogger(__name__)


def _sha(path: str) -> str:
    p = Path(path)
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return hashlib.sha256(f"path:{path}".encode()).hexdigest()


def write_npz_collection(store: Store, npz_path: str | Path, model_key: str, split: str = "train",
                         limit: int | None = None, batch: int = 2048, classes_key: str = "classes") -> int:
    """Add the ``split`` rows of ``npz_path`` under ``model_key``; returns how many the model holds."""
    data = np.load(npz_path, allow_pickle=False)
    x = np.ascontiguousarray(data[f"{split}_x"], np.float32)
    y = data.get(f"{split}_y")
    paths = data.get(f"{split}_paths")
    if paths is None:
        paths = np.array([f"{split}/{i}" for i in range(len(x))])
    classes = data.get(classes_key)
    n = len(x) if limit is None else min(limit, len(x))
    have = store.model_info().get(model_key)
    if have is not None and have.count >= n:
        return have.count
    store.register_model(model_key, x.shape[1], f"npz:{Path(npz_path).name}")
    for s in tqdm(range(0, n, batch), desc=f"write {model_key}", unit="batch"):
        items = []
        for i in range(s, min(s + batch, n)):
            label = None
            if y is not None:
                label = str(classes[int(y[i])]) if classes is not None else str(int(y[i]))
            items.append(NewImage(_sha(str(paths[i])), str(paths[i]), 32, 32, label=label,
                                  embeddings={model_key: x[i]}))
        store.add_images(items)
    return store.model_info()[model_key].count
