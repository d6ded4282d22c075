"""The :class:`EmbeddingModel` interface shared by every registered model.

Pure interface: numpy and PIL only, no torch and no runner. Overlapped (threaded or
multi-process) batch embedding lives in :mod:`imgsim_lab.pipeline`.
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

_KEY_CHARS = re.compile(r"^[A-Za-z0-9_.-]+$")
_SIZED_KEY = re.compile(r"^(?P<name>.+)_(?P<size>\d+)px$")


class ModelUnavailableError(RuntimeError):
    """A registered model cannot be built here (e.g. its weights file is missing)."""


def l2_normalize(x: Any, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` (a numpy array or anything ``np.asarray`` takes) at unit L2 norm, float32."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(n, eps), dtype=np.float32)


def default_num_threads() -> int:
    """Cores this process may run on (the CPU affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


_THREAD_LIMIT: int | None = None


def set_thread_limit(n: int | None) -> None:
    """Cap the compute threads models built afterwards use (e.g. 1 per worker process)."""
    global _THREAD_LIMIT
    _THREAD_LIMIT = n


def compute_threads(num_threads: int | None = None) -> int:
    """Threads a model's forward uses: the argument, else the process limit, else every core."""
    return int(num_threads or _THREAD_LIMIT or default_num_threads())


def resize_center_crop(img: Image.Image, size: int,
                       resample: Image.Resampling = Image.Resampling.BICUBIC) -> Image.Image:
    """RGB ``img`` resized so its shorter side is ``size``, then center-cropped to square."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def pil_to_uint8_hwc(img: Image.Image) -> np.ndarray:
    """An RGB PIL image as a C-contiguous (H, W, 3) uint8 array (no copy of the channels order)."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def pil_to_uint8_chw(img: Image.Image) -> np.ndarray:
    """An RGB PIL image as a (3, H, W) uint8 array."""
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def pil_to_normalized_chw(img: Image.Image, mean: Sequence[float] | float,
                          std: Sequence[float] | float) -> np.ndarray:
    """An RGB PIL image as (3, H, W) float32 ``(x - mean) / std`` (x in 0..255)."""
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - np.asarray(mean, dtype=np.float32)) * (1.0 / np.asarray(std, dtype=np.float32))
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)


def make_key(name: str, size: int, default_size: int) -> str:
    """The store identifier of a model's vectors: ``name`` or ``name_<size>px``."""
    key = name if size == default_size else f"{name}_{size}px"
    if not _KEY_CHARS.match(key):
        raise ValueError(f"model key {key!r} must match [A-Za-z0-9_.-]+")
    return key


def split_key(key: str) -> tuple[str, int | None]:
    """The inverse of :func:`make_key`: ``efficientnet_lite0_96px`` -> ``("efficientnet_lite0", 96)``,
    a bare name -> ``(name, None)``."""
    m = _SIZED_KEY.match(key)
    return (m["name"], int(m["size"])) if m else (key, None)


def stack(batch: Any) -> np.ndarray:
    """A batch as one numpy array: an array as is, a torch tensor or a list of inputs stacked."""
    if isinstance(batch, np.ndarray):
        return batch
    if hasattr(batch, "detach"):
        return batch.detach().cpu().numpy()
    parts = [p.detach().cpu().numpy() if hasattr(p, "detach") else np.asarray(p) for p in batch]
    return np.stack(parts) if parts else np.zeros((0,), np.float32)


class EmbeddingModel(ABC):
    """A model that maps RGB images to L2-normalized float32 vectors of length ``dim``.

    Subclasses set ``name``, ``version``, ``dim`` and ``default_size`` and implement
    :meth:`preprocess` (one PIL image -> one numpy array; ``np.stack`` of these is a batch)
    and :meth:`_forward` (batch -> (n, dim) raw features). ``version`` must change
    whenever weights or preprocessing change: stored vectors are checked against it. It
    never depends on the backend that computes the forward.
    """

    name: str
    version: str
    dim: int
    default_size: int
    #: What runs the forward ("numpy", "onnxruntime", "torch").
    backend: str = "numpy"

    #: Pixels (n * S * S) per forward call; larger batches are split. Big activations
    #: (> 32 MB) are mmapped fresh by glibc on every call and page faults then dominate:
    #: lite0 at 160 px ran ~2x faster in slices of 16 than in batches of 64 here.
    forward_pixels: int | None = None
    #: (name, size, options) given to ``get_model``; set by the registry.
    build_args: tuple[str, int | None, dict[str, Any]] | None = None

    def __init__(self, size: int | None = None) -> None:
        self.size = int(size or self.default_size)
        if self.size < 8:
            raise ValueError(f"{self.name}: size must be >= 8 pixels, got {self.size}")

    @property
    def key(self) -> str:
        """Identifier its vectors are stored under; differs per input size."""
        return make_key(self.name, self.size, self.default_size)

    def info(self) -> dict[str, Any]:
        """Name, version, dim, sizes, key and backend as a JSON-able dict."""
        return {"name": self.name, "version": self.version, "dim": self.dim,
                "size": self.size, "default_size": self.default_size, "key": self.key,
                "backend": self.backend}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, size={self.size}, "
                f"dim={self.dim}, version={self.version!r}, backend={self.backend!r})")

    @abstractmethod
    def preprocess(self, img: Image.Image) -> np.ndarray:
        """One PIL image -> one input array (thread-safe; runs in decode workers)."""

    @abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """A stacked batch -> (n, dim) unnormalized features."""

    def embed_batch(self, batch: Any) -> np.ndarray:
        """Stacked :meth:`preprocess` outputs -> (n, dim) float32, L2-normalized rows."""
        batch = stack(batch)
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = batch.shape[0]
        if self.forward_pixels and batch.ndim == 4:
            h, w = _spatial(batch)
            step = max(1, self.forward_pixels // (h * w))
        if step >= batch.shape[0]:
            out = self._forward(batch)
        else:
            out = np.concatenate([np.asarray(self._forward(batch[i:i + step]))
                                  for i in range(0, batch.shape[0], step)])
        vecs = l2_normalize(out)
        if vecs.shape != (batch.shape[0], self.dim):
            raise RuntimeError(f"{self.name}: expected {(batch.shape[0], self.dim)}, "
                               f"got {vecs.shape}")
        return vecs

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Embed PIL images in order, ``batch_size`` at a time (synchronous; for overlapped
        decoding use :func:`imgsim_lab.pipeline.embed_stream`)."""
        parts = [self.embed_batch([self.preprocess(im) for im in images[i:i + batch_size]])
                 for i in range(0, len(images), batch_size)]
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(parts, axis=0)

    def warm_up(self) -> EmbeddingModel:
        """Load everything the first real query would (sessions, kernels); cheap when done."""
        self.embed_images([Image.new("RGB", (self.size, self.size), (127, 127, 127))])
        return self


def _spatial(batch: np.ndarray) -> tuple[int, int]:
    """(H, W) of an NCHW or NHWC batch (channels are the axis of size 3 or 1)."""
    if batch.shape[-1] in (1, 3) and batch.shape[1] not in (1, 3):
        return batch.shape[1], batch.shape[2]
    return batch.shape[-2], batch.shape[-1]
