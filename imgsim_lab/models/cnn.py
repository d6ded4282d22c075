"""What every pretrained CNN shares: uint8 preprocessing, in-network normalization and the
choice of backend (ONNX Runtime by default, torch eager on request).

``preprocess`` only resizes and crops (PIL) and returns (S, S, 3) uint8; the network
starts with ``(x - mean) / std``, so decode threads do a quarter of the memory traffic
they did with float32 CHW arrays. ``backend="onnxruntime"`` runs a cached ONNX export
(:mod:`imgsim_lab.models.onnx_backend`) and, once exported, never imports torch;
``backend="torch"`` builds the torch network. Both give the same vectors (min cosine
>= 0.9999, tested), so ``version`` does not depend on the backend.
"""

from __future__ import annotations

import logging
import threading
from abc import abstractmethod
from typing import Any

import numpy as np
from PIL import Image

from imgsim_lab.models.base import (
    EmbeddingModel,
    compute_threads,
    pil_to_uint8_hwc,
    resize_center_crop,
)
from imgsim_lab.models.onnx_backend import OrtOptions, cache_dir, export_torch, load_runner

log = logging.getLogger(__name__)

BACKENDS = ("onnxruntime", "torch")
DEFAULT_BACKEND = "onnxruntime"
PRECISIONS = ("fp32", "bf16")


class CNNModel(EmbeddingModel):
    """A CNN embedding: subclasses give ``mean``/``std`` (0..255 scale), ``resample``,
    :meth:`build_features` (the torch feature network) and set ``name``, ``dim``,
    ``default_size`` and ``base_version`` before calling :meth:`_setup`.

    Options: ``backend`` ("onnxruntime" default, "torch"), ``precision`` ("fp32"; "bf16"
    torch autocast), ``num_threads``,
    ``channels_last`` (torch only), ``ort`` (:class:`OrtOptions`).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: Image.Resampling = Image.Resampling.BICUBIC
    base_version: str
    forward_pixels = 16 * 160 * 160

    def _setup(self, *, backend: str | None, precision: str, num_threads: int | None,
               channels_last: bool, ort: OrtOptions | None) -> None:
        backend = backend or DEFAULT_BACKEND
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "bf16" and backend != "torch":
            raise ValueError("precision='bf16' needs backend='torch'")
        self.backend, self.precision = backend, precision
        self.channels_last = channels_last
        self.threads = compute_threads(num_threads)
        self.ort_options = ort or OrtOptions()
        suffix = "" if precision == "fp32" else f"-{precision}"
        self.version = f"{self.base_version}{suffix}"
        self._runner: Any = None
        self._torch: Any = None
        self._lock = threading.RLock()

    # -- torch ---------------------------------------------------------------------------

    @abstractmethod
    def build_features(self) -> Any:
        """The torch module mapping normalized float NCHW to pooled features (n, d[, 1, 1])."""

    def torch_module(self) -> Any:
        """The torch :class:`~imgsim_lab.models.torch_nets.Embedder` (built once, on demand)."""
        with self._lock:
            if self._torch is None:
                from imgsim_lab.models.torch_nets import Embedder, use_threads

                use_threads(self.threads)
                self._torch = Embedder(self.build_features(), self.mean, self.std).eval()
                for p in self._torch.parameters():
                    p.requires_grad_(False)
            return self._torch

    # -- onnxruntime ----------------------------------------------------------------------

    def onnx_path(self):
        """Cache file of this model's fp32 export (per name, input size and version)."""
        return cache_dir() / f"{self.name}-{self.size}px-{self.base_version}.onnx"

    def _ort_runner(self):
        meta = {"model": self.name, "version": self.version, "size": self.size,
                "input": f"uint8 (n, {self.size}, {self.size}, 3)"}
        return load_runner(self.onnx_path(), export_torch(self.torch_module, (2, self.size, self.size, 3)),
                           meta, self.threads, self.ort_options)

    # -- the interface -------------------------------------------------------------------

    def runner(self):
        """What runs the forward (built on first use: ONNX session or torch module)."""
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    self._runner = self._make_runner()
        return self._runner

    def _make_runner(self):
        if self.backend == "onnxruntime":
            return self._ort_runner()
        from imgsim_lab.models.torch_nets import TorchRunner

        return TorchRunner(self.torch_module(), self.threads, self.precision, self.channels_last)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """RGB, shorter side resized to ``size`` and center-cropped: (S, S, 3) uint8."""
        return pil_to_uint8_hwc(resize_center_crop(img, self.size, self.resample))

    def _check(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim != 4 or batch.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"{self.key}: batch of shape {tuple(batch.shape)}; the model is built "
                             f"for (n, {self.size}, {self.size}, 3) uint8 from preprocess()")
        if batch.dtype != np.uint8:
            batch = np.clip(np.rint(batch), 0, 255).astype(np.uint8)
        return batch

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self.runner()(self._check(batch))

    def warm_up(self) -> CNNModel:
        """Open the ONNX session (exporting once if needed) or build the torch network."""
        self.runner()
        return super().warm_up()  # type: ignore[return-value]
