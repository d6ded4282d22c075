"""Training-free baselines: ``pixels`` and ``color_hist``.

Both ``preprocess`` to a (3, S, S) array (float32 in [0, 1] for ``pixels``, uint8 for
``color_hist``); ``np.stack`` of those is the batch for ``embed_batch``. numpy only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from imgsim_lab.models.base import EmbeddingModel, pil_to_normalized_chw, pil_to_uint8_chw


def _squash(img: Image.Image, size: int) -> Image.Image:
    """RGB and resized to size x size (whole image, aspect not kept; box filter)."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BOX if min(img.size) >= size
                         else Image.Resampling.BILINEAR)
    return img


class Pixels(EmbeddingModel):
    """Downsampled raw RGB (default 32x32 -> 3072-d), mean-centered per image.

    Centering removes overall brightness, so cosine compares the pixel pattern; the
    dimension grows with ``size`` (3 * size**2).
    """

    name = "pixels"
    version = "pixels-box-center-v1"
    default_size = 32

    def __init__(self, size: int | None = None) -> None:
        super().__init__(size)
        self.dim = 3 * self.size * self.size

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """(3, S, S) float32 in [0, 1]."""
        return pil_to_normalized_chw(_squash(img, self.size), 0.0, 255.0)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = batch.reshape(batch.shape[0], -1).astype(np.float32, copy=False)
        return x - x.mean(axis=1, keepdims=True, dtype=np.float32)


class ColorHist(EmbeddingModel):
    """Joint RGB histogram, 8 bins per channel (512-d), of the image at ``size`` px.

    Vectors are sqrt of the normalized counts (Hellinger), so cosine = Bhattacharyya
    coefficient of the two color distributions: 1 for equal histograms, 0 for disjoint.
    """

    name = "color_hist"
    version = "color_hist-8x8x8-sqrt-v1"
    default_size = 32
    dim = 512
    bins = 8

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """(3, S, S) uint8."""
        return pil_to_uint8_chw(_squash(img, self.size))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        q = batch.astype(np.int64) * self.bins // 256  # (n, 3, S, S) bin per channel
        idx = ((q[:, 0] * self.bins + q[:, 1]) * self.bins + q[:, 2]).reshape(batch.shape[0], -1)
        n = batch.shape[0]
        flat = (idx + (np.arange(n, dtype=np.int64) * self.dim)[:, None]).ravel()
        counts = np.bincount(flat, minlength=n * self.dim).reshape(n, self.dim).astype(np.float32)
        return np.sqrt(counts / np.float32(idx.shape[1]))
