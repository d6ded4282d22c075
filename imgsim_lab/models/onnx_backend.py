"""ONNX Runtime: the exported-model cache and the inference session (the default backend).

A CNN is exported once per (name, version, input size, variant) to
``<data dir>/models/onnx/<key>-<version>[-<variant>].onnx`` next to a manifest
(``.onnx.json``) holding its sha256. A file that is missing, fails its checksum or does
not load is exported again, under a file lock so concurrent processes export it once.
Loading a cached model needs neither torch nor the weights package's network code.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgsim_lab.images import sha256_file
from imgsim_lab.models.base import ModelUnavailableError

log = logging.getLogger(__name__)

#: Environment variable naming the exported-model cache (default ``<data dir>/models/onnx``).
ENV_CACHE = "IMGSIM_ONNX_CACHE"


def cache_dir() -> Path:
    """Where exported models live: ``$IMGSIM_ONNX_CACHE``, else ``<data dir>/models/onnx``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    from imgsim_lab.config import data_dir

    return data_dir() / "models" / "onnx"




def manifest_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def is_valid(path: Path) -> bool:
    """The file exists and matches the sha256 and size its manifest records."""
    try:
        meta = json.loads(manifest_path(path).read_text())
        if path.stat().st_size != meta["bytes"]:
            return False
        return sha256_file(path) == meta["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_exported(path: Path, export: Callable[[Path], None], meta: dict[str, Any],
                    force: bool = False) -> Path:
    """``path`` holding a checked export: reused when valid, else ``export(tmp)`` and renamed.

    ``meta`` is recorded in the manifest (what was exported, library versions).
    """
    if not force and is_valid(path):
        return path
    with _locked(path):
        if not force and is_valid(path):  # another process exported it meanwhile
            return path
        if path.exists():
            log.warning("ONNX cache %s is missing its manifest or fails its checksum; "
                        "exporting it again", path)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        t0 = time.perf_counter()
        try:
            export(tmp)
            digest, size = sha256_file(tmp), tmp.stat().st_size
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        man = manifest_path(path)
        man_tmp = man.with_name(f"{man.name}.tmp-{os.getpid()}")
        man_tmp.write_text(json.dumps({"sha256": digest, "bytes": size, "created": time.time(),
                                       **meta}, indent=2, sort_keys=True, default=str))
        os.replace(man_tmp, man)
        log.info("exported %s (%.1f MB) in %.1f s", path.name, size / 1e6, time.perf_counter() - t0)
    return path


@dataclass(frozen=True)
class OrtOptions:
    """ONNX Runtime session settings (the defaults are the measured best here).

    ``spinning``: let idle intra-op threads spin-wait for work (ORT's default). Off by
    default: on a shared or busy machine a spinning thread steals the core its partner
    (or the decode threads) needs. ``optimization``: ``"all"``, ``"extended"``,
    ``"basic"`` or ``"none"``.
    """

    threads: int = 0  # 0: every core available
    spinning: bool = False
    optimization: str = "all"


def _session_options(opts: OrtOptions, threads: int):
    import onnxruntime as ort

    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: no notes about unused initializers
    so.graph_optimization_level = levels[opts.optimization]
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if opts.spinning else "0")
    return so


class OrtRunner:
    """Runs an exported model ``x -> (n, d)`` on the CPU execution provider."""

    def __init__(self, path: Path, threads: int, opts: OrtOptions = OrtOptions()) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise ModelUnavailableError("backend='onnxruntime' needs `pip install onnxruntime`") from exc
        self.path = path
        self.session = ort.InferenceSession(str(path), _session_options(opts, threads),
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})[0]


def load_runner(path: Path, export: Callable[[Path], None], meta: dict[str, Any], threads: int,
                opts: OrtOptions = OrtOptions()) -> OrtRunner:
    """An :class:`OrtRunner` on the cached export, exporting (again) when missing or corrupt."""
    ensure_exported(path, export, meta)
    try:
        return OrtRunner(path, threads, opts)
    except ModelUnavailableError:
        raise
    except Exception as exc:  # a file whose manifest matches but that ORT cannot load
        log.warning("ONNX Runtime cannot load %s (%s); exporting it again", path, exc)
        ensure_exported(path, export, meta, force=True)
        return OrtRunner(path, threads, opts)


def export_torch(module_factory: Callable[[], Any], example_shape: tuple[int, ...],
                 example_dtype: str = "uint8") -> Callable[[Path], None]:
    """An ``export(path)`` writing ``module_factory()`` to ONNX with a dynamic batch axis."""

    def export(path: Path) -> None:
        import warnings

        import torch

        module = module_factory()
        example = torch.zeros(example_shape, dtype=getattr(torch, example_dtype))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=["x"],
                              output_names=["y"], dynamo=False, opset_version=17,
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})

    return export
