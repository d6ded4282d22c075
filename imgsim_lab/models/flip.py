"""Test-time flip averaging as a model of its own: ``<name>_flip``.

The vector of an image is ``l2n(l2n(f(x)) + l2n(f(mirror x)))`` for a base model ``f``,
so an image and its mirror image get the same vector. It has its own key and version
(``<base version>-flipavg``), so its vectors never mix with the base model's.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from imgsim_lab.models.base import EmbeddingModel, l2_normalize

FLIP_SUFFIX = "_flip"


def width_axis(batch: np.ndarray) -> int:
    """The width axis of an NHWC (channels last) or NCHW batch."""
    return 2 if batch.shape[-1] in (1, 3) and batch.shape[1] not in (1, 3) else batch.ndim - 1


class FlipAveraged(EmbeddingModel):
    """``l2n(l2n(f(x)) + l2n(f(mirror x)))`` for a base model ``f``."""

    def __init__(self, base: EmbeddingModel) -> None:
        self.base = base
        self.name = base.name + FLIP_SUFFIX
        self.dim = base.dim
        self.default_size = base.default_size
        self.version = f"{base.version}-flipavg"
        self.forward_pixels = base.forward_pixels
        self.backend = base.backend
        super().__init__(base.size)

    def preprocess(self, img: Image.Image) -> np.ndarray:
        return self.base.preprocess(img)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        mirror = np.ascontiguousarray(np.flip(batch, axis=width_axis(batch)))
        return l2_normalize(self.base._forward(batch)) + l2_normalize(self.base._forward(mirror))


def flip_factory(make_base):
    """A registry factory for the flip-averaged version of ``make_base(size, **options)``."""
    def factory(size: int | None = None, **options) -> FlipAveraged:
        return FlipAveraged(make_base(size=size, **options))

    factory.__doc__ = f"{(make_base.__doc__ or 'model').strip().splitlines()[0]} with flip averaging"
    return factory
