"""``imgsim bench embed``: model forward vs end-to-end (JPEG files -> vectors) throughput."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from imgsim_lab.models import ProcessEmbedder, embed_stream, get_model
from imgsim_lab.models.base import default_num_threads

log = logging.getLogger(__name__)

NAME = "embed"
HELP = "embedding throughput: model forward alone vs end-to-end from JPEG files"
DEFAULT_ZIP = "../shared/datasets/cifar10-jpeg.zip"
ENV_ZIP = "IMGSIM_CIFAR10_ZIP"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0", help="registered model name")
    parser.add_argument("--size", type=int, default=None, help="input size (default: model's)")
    parser.add_argument("--n", type=int, default=512, help="number of images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="decode threads")
    parser.add_argument("--processes", type=int, default=0,
                        help="end-to-end with N worker processes x 1 torch thread "
                             "(forward_images_per_s stays the 1-process forward)")
    parser.add_argument("--no-channels-last", action="store_true",
                        help="NCHW memory format (efficientnet_lite*, torchvision models)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="efficientnet_lite* only")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default=None,
                        help="efficientnet_lite* only (onnxruntime needs onnx + onnxruntime)")
    parser.add_argument("--zip", dest="zip_path", default=None,
                        help=f"CIFAR-10 JPEG zip (default: ${ENV_ZIP}, else {DEFAULT_ZIP}, "
                             "else generated images)")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_pressure() -> float | None:
    """Linux PSI ``some avg10`` (% of time runnable tasks waited for a CPU); None if absent."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(dict(f.split("=") for f in first.split()[1:])["avg10"])
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _find_zip(path: str | None) -> Path | None:
    for cand in (path, os.environ.get(ENV_ZIP), DEFAULT_ZIP, "/work/shared/datasets/cifar10-jpeg.zip"):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def write_images(directory: Path, n: int, zip_path: Path | None, seed: int = 0) -> tuple[list[Path], str]:
    """Write ``n`` JPEGs to ``directory``: CIFAR-10 train images if the zip exists, else generated."""
    paths: list[Path] = []
    if zip_path is not None:
        with zipfile.ZipFile(zip_path) as zf:
            names = sorted(m for m in zf.namelist() if m.startswith("train/") and m.endswith(".jpg"))
            rng = np.random.default_rng(seed)
            for i, member in enumerate(rng.choice(names, size=min(n, len(names)), replace=False)):
                p = directory / f"{i:06d}.jpg"
                p.write_bytes(zf.read(member))
                paths.append(p)
        return paths, f"cifar10:{zip_path}"
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    for i in range(n):
        c = rng.uniform(0, 255, size=(3, 3))
        arr = np.stack([c[k, 0] + c[k, 1] * xx / 32 + c[k, 2] * np.sin(yy / (2 + i % 7))
                        for k in range(3)], -1)
        arr += rng.normal(0, 12, arr.shape)
        p = directory / f"{i:06d}.jpg"
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths, "generated"


def run(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"precision": args.precision} if args.precision else {}
    if args.backend:
        options["backend"] = args.backend
    if args.no_channels_last:
        options["channels_last"] = False
    model = get_model(args.model, size=args.size, **options)
    bs = args.batch_size
    pressure_before = cpu_pressure()
    with tempfile.TemporaryDirectory(prefix="imgsim-bench-embed-") as tmp:
        paths, source = write_images(Path(tmp), args.n, _find_zip(args.zip_path))
        n = len(paths)
        batch = torch.stack([model.preprocess(Image.open(p)) for p in paths])
        model.embed_batch(batch[:bs])  # warm-up (allocations, oneDNN primitives)

        t0 = time.perf_counter()
        fwd = [model.embed_batch(batch[i:i + bs]) for i in range(0, n, bs)]
        forward_s = time.perf_counter() - t0

        items = [(str(p), p) for p in paths]
        if args.processes > 1:
            with ProcessEmbedder(model, args.processes) as pe:
                list(pe.stream(items[:bs * args.processes], bs))  # warm-up
                t0 = time.perf_counter()
                e2e = [b.vectors for b in pe.stream(items, bs, on_error="raise")]
                e2e_s = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            e2e = [b.vectors for b in embed_stream(model, items, batch_size=bs,
                                                   workers=args.workers, on_error="raise")]
            e2e_s = time.perf_counter() - t0
    a, b = np.concatenate(fwd), np.concatenate(e2e)
    fwd_ips, e2e_ips = n / forward_s, n / e2e_s
    result = {
        "benchmark": NAME, "model": model.info(), "n": n, "batch_size": bs,
        "images": source, "torch_threads": torch.get_num_threads(),
        "decode_workers": args.workers or default_num_threads(),
        "processes": args.processes or 1, "options": options,
        "cpu": _cpu_name(), "cores": default_num_threads(), "torch": torch.__version__,
        "cpu_pressure_avg10": [pressure_before, cpu_pressure()],
        "forward_seconds": round(forward_s, 3), "end_to_end_seconds": round(e2e_s, 3),
        "forward_images_per_s": round(fwd_ips, 1), "end_to_end_images_per_s": round(e2e_ips, 1),
        "ratio": round(e2e_ips / fwd_ips, 4),
        "min_cosine_forward_vs_end_to_end": round(float((a * b).sum(1).min()), 6),
    }
    log.info("%s: forward %.1f img/s, end-to-end %.1f img/s (ratio %.2f)",
             model.key, fwd_ips, e2e_ips, result["ratio"])
    return result
