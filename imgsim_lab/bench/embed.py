"""``imgsim bench embed``: model forward vs end-to-end (JPEG files -> vectors), and vs torch.

One run, interleaved rounds (so a change in machine load hits every measurement alike):
each round times the model's forward on preloaded inputs, the same forward on torch eager
fp32 (``compare_torch``) and the end-to-end pipeline from JPEG files, all with the same
batch size. Best-of-rounds speeds and their ratios go into the JSON.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgsim_lab.models import get_model
from imgsim_lab.models.base import default_num_threads
from imgsim_lab.pipeline import EmbedOptions, ProcessEmbedder, embed_stream

log = logging.getLogger(__name__)

NAME = "embed"
HELP = "embedding throughput: forward alone vs end-to-end from JPEG files, and vs torch eager"
#: Legacy name of the CIFAR-10 JPEG archive variable (``$IMGSIM_CIFAR10_SOURCE`` also works).
ENV_ZIP = "IMGSIM_CIFAR10_ZIP"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0", help="registered model name")
    parser.add_argument("--size", type=int, default=None, help="input size (default: model's)")
    parser.add_argument("--n", type=int, default=512, help="number of images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best is reported)")
    parser.add_argument("--workers", type=int, default=None, help="decode threads")
    parser.add_argument("--processes", type=int, default=0,
                        help="end-to-end with N worker processes x 1 compute thread "
                             "(forward_images_per_s stays the 1-process forward)")
    parser.add_argument("--backend", choices=["onnxruntime", "torch"], default=None,
                        help="CNN backend (default onnxruntime)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                        help="CNNs: bf16 = torch autocast (needs --backend torch)")
    parser.add_argument("--no-channels-last", action="store_true", help="torch backend: NCHW")
    parser.add_argument("--ort-spinning", action="store_true",
                        help="ONNX Runtime: let idle threads spin-wait (its own default)")
    parser.add_argument("--ort-optimization", choices=["all", "extended", "basic", "none"],
                        default=None, help="ONNX Runtime graph optimization level (default all)")
    parser.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    parser.add_argument("--compare-torch", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch eager fp32 on the same inputs (CNNs; default on)")
    parser.add_argument("--zip", dest="zip_path", default=None,
                        help=f"CIFAR-10 JPEG zip (default: ${ENV_ZIP}, else the CIFAR-10 source "
                             "setup-cifar10 uses, else generated images)")


def cpu_name() -> str:
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


def find_zip(path: str | None = None) -> Path | None:
    """The CIFAR-10 JPEG zip: ``path``, ``$IMGSIM_CIFAR10_ZIP``, else the set-up's default source."""
    from imgsim_lab.datasets import default_cifar10_source

    for cand in (path, os.environ.get(ENV_ZIP)):
        if cand and Path(cand).is_file():
            return Path(cand)
    src = default_cifar10_source()
    return src if src is not None and src.suffix == ".zip" else None


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


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``get_model`` options from the command line (only those given)."""
    options: dict[str, Any] = {}
    if args.precision:
        options["precision"] = args.precision
    if args.backend:
        options["backend"] = args.backend
    if args.no_channels_last:
        options["channels_last"] = False
    if args.threads:
        options["num_threads"] = args.threads
    if args.ort_spinning or args.ort_optimization:
        from imgsim_lab.models.onnx_backend import OrtOptions

        options["ort"] = OrtOptions(spinning=args.ort_spinning,
                                    optimization=args.ort_optimization or "all")
    return options


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _forward(model, batch: np.ndarray, bs: int) -> np.ndarray:
    return np.concatenate([model.embed_batch(batch[i:i + bs]) for i in range(0, len(batch), bs)])


def run_embed_bench(model_name: str, size: int | None, n: int, batch_size: int, *,
                    options: dict[str, Any] | None = None, rounds: int = 3, workers: int | None = None,
                    processes: int = 0, compare_torch: bool = True,
                    zip_path: str | None = None) -> dict[str, Any]:
    """Forward, torch-eager forward and end-to-end throughput of one model; JSON-able dict."""
    options = dict(options or {})
    model = get_model(model_name, size=size, **options)
    torch_ref = None
    if compare_torch and getattr(model, "backend", "numpy") != "torch" and hasattr(model, "torch_module"):
        ref_opts = {k: v for k, v in options.items() if k in ("num_threads",)}
        torch_ref = get_model(model_name, size=size, backend="torch", **ref_opts)
    bs = batch_size
    pressure_before = cpu_pressure()
    times: dict[str, list[float]] = {"forward": [], "torch_forward": [], "end_to_end": []}
    with tempfile.TemporaryDirectory(prefix="imgsim-bench-embed-") as tmp:
        paths, source = write_images(Path(tmp), n, find_zip(zip_path))
        n = len(paths)
        batch = np.stack([model.preprocess(Image.open(p)) for p in paths])
        model.embed_batch(batch[:bs])  # warm-up (session, allocations, kernels)
        if torch_ref is not None:
            torch_ref.embed_batch(batch[:bs])
        items = [(str(p), p) for p in paths]
        pe = ProcessEmbedder(model, processes) if processes > 1 else None
        try:
            if pe is not None:
                list(pe.stream(items[:bs * processes], bs))  # warm-up
            opts = EmbedOptions(batch_size=bs, workers=workers, on_error="raise")
            for _ in range(max(1, rounds)):
                s, fwd = _timed(lambda: _forward(model, batch, bs))
                times["forward"].append(s)
                if torch_ref is not None:
                    s, ref = _timed(lambda: _forward(torch_ref, batch, bs))
                    times["torch_forward"].append(s)
                if pe is not None:
                    s, e2e = _timed(lambda: [b.vectors for b in pe.stream(items, opts)])
                else:
                    s, e2e = _timed(lambda: [b.vectors for b in embed_stream(model, items, opts)])
                times["end_to_end"].append(s)
        finally:
            if pe is not None:
                pe.close()
    a, b = fwd, np.concatenate(e2e)
    ips = {k: n / min(v) for k, v in times.items() if v}
    result: dict[str, Any] = {
        "benchmark": NAME, "model": model.info(), "n": n, "batch_size": bs, "rounds": rounds,
        "images": source, "compute_threads": getattr(model, "threads", None),
        "decode_workers": workers or default_num_threads(),
        "processes": processes or 1, "options": {k: str(v) for k, v in options.items()},
        "cpu": cpu_name(), "cores": default_num_threads(),
        "cpu_pressure_avg10": [pressure_before, cpu_pressure()],
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items() if v},
        "forward_images_per_s": round(ips["forward"], 1),
        "end_to_end_images_per_s": round(ips["end_to_end"], 1),
        "ratio": round(ips["end_to_end"] / ips["forward"], 4),
        "ratio_median": round(statistics.median(times["forward"])
                              / statistics.median(times["end_to_end"]), 4),
        "min_cosine_forward_vs_end_to_end": round(float((a * b).sum(1).min()), 6),
    }
    if torch_ref is not None:
        result["torch_forward_images_per_s"] = round(ips["torch_forward"], 1)
        result["forward_speedup_vs_torch"] = round(ips["forward"] / ips["torch_forward"], 3)
        result["min_cosine_vs_torch"] = round(float((a * ref).sum(1).min()), 6)
        result["torch"] = _torch_version()
    log.info("%s: forward %.1f img/s, end-to-end %.1f img/s (ratio %.2f)",
             model.key, ips["forward"], ips["end_to_end"], result["ratio"])
    return result


def _torch_version() -> str:
    import torch

    return torch.__version__


def run(args: argparse.Namespace) -> dict[str, Any]:
    return run_embed_bench(args.model, args.size, args.n, args.batch_size,
                           options=model_options(args), rounds=args.rounds, workers=args.workers,
                           processes=args.processes, compare_torch=args.compare_torch,
                           zip_path=args.zip_path)
