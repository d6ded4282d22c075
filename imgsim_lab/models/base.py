"""The :class:`EmbeddingModel` interface shared by every registered model."""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class ModelUnavailableError(RuntimeError):
    """A registered model cannot be built here (e.g. its weights file is missing)."""


def l2_normalize(x: np.ndarray | torch.Tensor, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, as a C-contiguous float32 array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float()
        x = x / x.norm(dim=1, keepdim=True).clamp_min(eps)
        return np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
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
    """Cap the torch threads models use in this process (e.g. 1 per worker process)."""
    global _THREAD_LIMIT
    _THREAD_LIMIT = n
    if n:
        torch.set_num_threads(n)


def use_all_cores(num_threads: int | None = None) -> None:
    """Let torch's intra-op pool use ``num_threads`` (default: every core available)."""
    n = num_threads or _THREAD_LIMIT or default_num_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        log.debug("torch intra-op threads set to %d", n)


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


def pil_to_uint8_chw(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a (3, H, W) uint8 tensor."""
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def pil_to_normalized_chw(img: Image.Image, mean: Sequence[float] | float,
                          std: Sequence[float] | float) -> torch.Tensor:
    """An RGB PIL image as (3, H, W) float32 ``(x - mean) / std`` (x in 0..255).

    Done in numpy on purpose: it runs in decode threads, and torch elementwise ops on
    tensors this size would start their own intra-op thread teams and fight the forward.
    """
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - np.asarray(mean, dtype=np.float32)) * (1.0 / np.asarray(std, dtype=np.float32))
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def make_key(name: str, size: int, default_size: int) -> str:
    """The store identifier of a model's vectors: ``name`` or ``name_<size>px``."""
    key = name if size == default_size else f"{name}_{size}px"
    if not _KEY_RE.match(key):
        raise ValueError(f"model key {key!r} must match [A-Za-z0-9_.-]+")
    return key


class EmbeddingModel(ABC):
    """A model that maps RGB images to L2-normalized float32 vectors of length ``dim``.

    Subclasses set ``name``, ``version``, ``dim`` and ``default_size`` and implement
    :meth:`preprocess` (one PIL image -> one tensor; ``torch.stack`` of these is a batch)
    and :meth:`_forward` (batch -> (n, dim) raw features). ``version`` must change
    whenever weights or preprocessing change: stored vectors are checked against it.
    """

    name: str
    version: str
    dim: int
    default_size: int

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
        """Name, version, dim, sizes and key as a JSON-able dict (stored as metadata)."""
        return {"name": self.name, "version": self.version, "dim": self.dim,
                "size": self.size, "default_size": self.default_size, "key": self.key}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, size={self.size}, "
                f"dim={self.dim}, version={self.version!r})")

    @abstractmethod
    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """One PIL image -> one input tensor (thread-safe; runs in decode workers)."""

    @abstractmethod
    def _forward(self, batch: torch.Tensor) -> torch.Tensor | np.ndarray:
        """A stacked batch -> (n, dim) unnormalized features."""

    def embed_batch(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
        """Stacked :meth:`preprocess` outputs -> (n, dim) float32, L2-normalized rows."""
        if not isinstance(batch, torch.Tensor):
            batch = torch.stack(list(batch))
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        step = batch.shape[0]
        if self.forward_pixels:
            step = max(1, self.forward_pixels // (batch.shape[-1] * batch.shape[-2]))
        with torch.inference_mode():
            if step >= batch.shape[0]:
                out = self._forward(batch)
            else:
                out = torch.cat([self._forward(batch[i:i + step])
                                 for i in range(0, batch.shape[0], step)])
        vecs = l2_normalize(out)
        if vecs.shape != (batch.shape[0], self.dim):
            raise RuntimeError(f"{self.name}: expected {(batch.shape[0], self.dim)}, "
                               f"got {vecs.shape}")
        return vecs

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Embed PIL images (in order) in batches; decode/forward overlap via the runner."""
        from imgsim_lab.models.runner import embed_stream

        parts = [b.vectors for b in embed_stream(self, enumerate(images), batch_size=batch_size,
                                                 on_error="raise")]
        if not parts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(parts, axis=0)
