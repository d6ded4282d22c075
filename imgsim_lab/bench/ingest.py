"""``imgsim bench ingest``: the whole ingest pipeline against the model forward alone.

Same images, batch size and input size in one run: ``model_only_images_per_s`` embeds
preloaded tensors; ``images_per_s`` goes from files on disk to vectors in a fresh
embedded store (read, hash, skip check, decode, preprocess, forward, write).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

NAME = "ingest"
HELP = "end-to-end ingest throughput vs the model forward alone (same batch size and size)"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=None, help="input size (default: the model's)")
    parser.add_argument("--n", type=int, default=512, help="images (CIFAR-10 JPEGs when the archive exists)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="decode threads of the pipeline")
    from imgsim_lab.scaleout.cluster import dask_address_arg

    parser.add_argument("--dask", metavar="ADDRESS", default=None, type=dask_address_arg,
                        help="instead: Dask workers (local:N) against one process with 2 threads, "
                             "ratio of images/s (imgsim_lab.scaleout.bench)")
    parser.add_argument("--dask-kv", metavar="URL", default=None,
                        help="with --dask: a server store to write to (default: fresh embedded RocksDB)")
    parser.add_argument("--scaling", action="store_true", help="with --dask: also 1..N-1 of the workers")
    parser.add_argument("--dask-rounds", type=int, default=1,
                        help="with --dask: alternate serial and dask runs this many times (medians)")
    parser.add_argument("--backend", choices=["onnxruntime", "torch"], default=None,
                        help="CNN backend (default onnxruntime)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of model-only and ingest (best is reported)")


def run_ingest_bench(model_name: str, size: int | None, n: int, batch_size: int, workers: int,
                     backend: str | None = None, rounds: int = 3) -> dict:
    """Ingest into a fresh embedded store vs the forward alone, interleaved; JSON-able dict."""
    import numpy as np
    from PIL import Image

    from imgsim_lab.bench.embed import cpu_pressure, find_zip, write_images
    from imgsim_lab.datasets import folder_items
    from imgsim_lab.ingest import ingest
    from imgsim_lab.models import get_model
    from imgsim_lab.store import open_store

    model = get_model(model_name, size=size, **({"backend": backend} if backend else {}))
    pressure = [cpu_pressure()]
    model_s, ingest_s = [], []
    with tempfile.TemporaryDirectory(prefix="imgsim-bench-ingest-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths, source = write_images(folder, n, find_zip(None))
        n = len(paths)
        batch = np.stack([model.preprocess(Image.open(p).convert("RGB")) for p in paths])
        model.embed_batch(batch[:batch_size])  # warm-up
        items = folder_items(folder)
        for r in range(max(1, rounds)):
            t0 = time.perf_counter()
            for i in range(0, n, batch_size):
                model.embed_batch(batch[i : i + batch_size])
            model_s.append(time.perf_counter() - t0)
            with open_store(f"rocksdb:{tmp}/kv{r}", "bench") as store:
                summary = ingest(items, store, [model], batch_size=batch_size, workers=workers,
                                 progress=False)
                ingest_s.append(summary.seconds)
                if r == 0:
                    again = ingest(items, store, [model], batch_size=batch_size, workers=workers,
                                   progress=False)
    pressure.append(cpu_pressure())
    result = {
        "benchmark": NAME, "model": model.key, "size": model.size, "backend": model.backend,
        "n": n, "batch_size": batch_size, "rounds": rounds,
        "images": source, "compute_threads": getattr(model, "threads", None), "decode_workers": workers,
        "images_per_s": n / min(ingest_s), "model_only_images_per_s": n / min(model_s),
        "seconds": {"ingest": [round(s, 3) for s in ingest_s], "model_only": [round(s, 3) for s in model_s]},
        "added": summary.added, "rejected": sum(summary.rejected.values()),
        "reingest_images_per_s": n / again.seconds if again.seconds else None,
        "reingest_duplicates": again.duplicates, "cpu_pressure_avg10": pressure,
    }
    result["ratio"] = result["images_per_s"] / result["model_only_images_per_s"]
    log.info("ingest bench: %.1f img/s end to end, %.1f model only (ratio %.2f)",
             result["images_per_s"], result["model_only_images_per_s"], result["ratio"])
    return result


def run(args: argparse.Namespace) -> dict:
    if args.dask:
        from imgsim_lab.scaleout.bench import run_dask_ingest_bench

        return run_dask_ingest_bench(args.model, args.size, args.n, args.batch_size, args.dask,
                                     kv=args.dask_kv, scaling=args.scaling,
                                     rounds=args.dask_rounds)
    return run_ingest_bench(args.model, args.size, args.n, args.batch_size, args.workers,
                            backend=args.backend, rounds=args.rounds)
