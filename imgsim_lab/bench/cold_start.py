"""``imgsim bench cold-start``: wall time of fresh processes (``imgsim --help``, one search).

Builds an embedded store of ``n`` CIFAR-10 images (real vectors: ingested through the
model, or taken from an ``--npz`` of precomputed ones) with its index snapshot saved, then
times new processes, each ``repeats`` times: the bare interpreter, ``import torch`` (what
the cold path avoids), ``imgsim --help`` and ``imgsim search QUERY``. A last run of the
same search reports which heavy modules it imported.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAME = "cold-start"
HELP = "cold start: wall time of `imgsim --help` and of one `imgsim search` in fresh processes"
log = logging.getLogger(__name__)

_PROBE = ("import sys, json; from imgsim_lab.cli import main; rc = main(sys.argv[1:]); "
          "print(json.dumps({'rc': rc, 'modules': [m for m in ('torch', 'torchvision', "
          "'onnxruntime', 'faiss', 'rocksdict', 'redis') if m in sys.modules]}), file=sys.stderr)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--n", type=int, default=5000, help="images in the store")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each command")
    parser.add_argument("--npz", default=None,
                        help="precomputed vectors (train_x, train_paths) of --model instead of ingesting")
    parser.add_argument("--backend", choices=["onnxruntime", "torch"], default=None)


def _imgsim() -> list[str]:
    script = Path(sys.executable).with_name("imgsim")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "imgsim_lab.cli"]


def _wall(cmd: list[str], env: dict[str, str], repeats: int) -> dict[str, Any]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "runs_s": [round(t, 3) for t in times]}


def _build_store(tmp: Path, model, n: int, npz: str | None) -> tuple[str, Path]:
    from imgsim_lab.bench.embed import find_zip, write_images
    from imgsim_lab.datasets import folder_items
    from imgsim_lab.index import SimilarityIndex
    from imgsim_lab.ingest import ingest
    from imgsim_lab.store import NewImage, open_store

    url = f"rocksdb:{tmp}/kv"
    zip_path = find_zip(None)
    images = tmp / "images"
    images.mkdir()
    paths, _ = write_images(images, n + 1, zip_path, seed=1)
    query = paths.pop().rename(tmp / "query.jpg")  # never stored: it is embedded by the search
    with open_store(url, "bench") as store:
        if npz:
            import numpy as np

            z = np.load(npz)
            store.register_model(model.key, model.dim, model.version)
            vecs, srcs = z["train_x"][:n], z["train_paths"][:n]
            new = []
            for v, src in zip(vecs, srcs, strict=True):
                data = Path(str(src)).read_bytes()
                new.append(NewImage(hashlib.sha256(data).hexdigest(), str(src), 32, 32,
                                    Path(str(src)).parent.name, {model.key: v}))
            for i in range(0, len(new), 512):
                store.add_images(new[i:i + 512])
        else:
            ingest(folder_items(images), store, [model], progress=False)
        idx = SimilarityIndex(store, model.key)
        idx.sync()
        idx.save()
    return url, query


def run_cold_start_bench(model_name: str, n: int, repeats: int, npz: str | None = None,
                         backend: str | None = None) -> dict[str, Any]:
    from imgsim_lab.bench.embed import cpu_pressure
    from imgsim_lab.config import ENV_DATA_DIR
    from imgsim_lab.models import get_model
    from imgsim_lab.models.onnx_backend import ENV_CACHE, cache_dir

    onnx_cache = str(cache_dir().resolve())
    pressure = [cpu_pressure()]
    tmp = Path(tempfile.mkdtemp(prefix="imgsim-bench-cold-"))
    old = {k: os.environ.get(k) for k in (ENV_DATA_DIR, ENV_CACHE)}
    try:
        os.environ[ENV_DATA_DIR] = str(tmp / "data")
        os.environ[ENV_CACHE] = onnx_cache
        model = get_model(model_name, **({"backend": backend} if backend else {}))
        model.warm_up()  # exports once if needed, so the timed runs measure the cold path
        url, query = _build_store(tmp, model, n, npz)
        env = dict(os.environ)
        search = ["search", str(query), "--model", model_name, "--kv", url, "--namespace", "bench",
                  "--k", "5", "--json"] + (["--backend", backend] if backend else [])
        result: dict[str, Any] = {
            "benchmark": NAME, "model": model.key, "backend": model.backend, "n": n,
            "repeats": repeats, "vectors": "npz" if npz else "ingested",
            "python": _wall([sys.executable, "-c", "pass"], env, repeats),
            "import_torch": _wall([sys.executable, "-c", "import torch"], env, repeats),
            "help": _wall(_imgsim() + ["--help"], env, repeats),
            "search": _wall(_imgsim() + search, env, repeats),
        }
        probe = subprocess.run([sys.executable, "-c", _PROBE] + search, env=env,
                               capture_output=True, text=True)
        last = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "{}"
        result["search_imported"] = json.loads(last).get("modules")
        result["search_imports_torch"] = "torch" in (result["search_imported"] or [])
        out = json.loads(probe.stdout) if probe.returncode == 0 else {}
        result["search_matches"] = len(out.get("matches", []))
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)
    pressure.append(cpu_pressure())
    result["cpu_pressure_avg10"] = pressure
    result["targets"] = {"help_s": 0.3, "search_s": 1.0, "note": "idle machine"}
    log.info("cold start: --help %.2f s, search %.2f s (median)", result["help"]["median_s"],
             result["search"]["median_s"])
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    return run_cold_start_bench(args.model, args.n, args.repeats, args.npz, args.backend)
