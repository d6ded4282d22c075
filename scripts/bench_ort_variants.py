"""Interleaved forward speed and agreement of ONNX Runtime settings for lite0 at 160 px (one run).

Usage: python scripts/bench_ort_variants.py [ROUNDS] > out.json   (needs data/cifar10; see docs/models.md)
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgsim_lab.bench.embed import cpu_pressure
from imgsim_lab.models import get_model
from imgsim_lab.models.onnx_backend import OrtOptions

files = sorted(Path("data/cifar10/test").glob("*/*.jpg"))[::39][:256]
base = get_model("efficientnet_lite0")
x = np.stack([base.preprocess(Image.open(f).convert("RGB")) for f in files])
variants = {
    "default (spinning off, all, 2 threads)": base,
    "spinning on": get_model("efficientnet_lite0", ort=OrtOptions(spinning=True)),
    "optimization basic": get_model("efficientnet_lite0", ort=OrtOptions(optimization="basic")),
    "optimization extended": get_model("efficientnet_lite0", ort=OrtOptions(optimization="extended")),
    "1 thread": get_model("efficientnet_lite0", num_threads=1),
}
ref = base.embed_batch(x)
best = {k: 1e9 for k in variants}
pressure = [cpu_pressure()]
for m in variants.values():
    m.embed_batch(x[:64])
for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    for k, m in variants.items():
        t = time.perf_counter()
        np.concatenate([m.embed_batch(x[i:i + 64]) for i in range(0, len(x), 64)])
        best[k] = min(best[k], time.perf_counter() - t)
out = {k: {"images_per_s": round(len(x) / best[k], 1),
           "vs_default": round(best["default (spinning off, all, 2 threads)"] / best[k], 3),
           "min_cosine_vs_default": round(float((variants[k].embed_batch(x) * ref).sum(1).min()), 6)}
       for k in variants}
pressure.append(cpu_pressure())
print(json.dumps({"n": len(x), "batch": 64, "cpu_pressure_avg10": pressure, "variants": out}, indent=1))
