"""Derived models and flip averaging as :class:`~imgsim_lab.models.EmbeddingModel` s.

- :class:`DerivedModel` embeds a *new* image (a search upload) the way the store's vectors
  of a derived model were made: each base model embeds it, then the derived transform
  applies. Stored images are never re-embedded (see :func:`registry.derive`).
- :class:`FlipAveraged` is test-time flip averaging at ingest: the normalized mean of the
  base model's embeddings of the image and of its mirror image. It is registered as the
  model ``<name>_flip`` for every EfficientNet-Lite (``imgsim ingest --model
  efficientnet_lite0_flip``), with its own key and version.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from PIL import Image

from imgsim_lab.adapters import registry
from imgsim_lab.adapters.spec import StaleBaseError, is_derived_key
from imgsim_lab.models import EmbeddingModel, get_model
from imgsim_lab.models.base import l2_normalize
from imgsim_lab.store import Store

_SIZED = re.compile(r"^(?P<name>.+)_(?P<size>\d+)px$")
FLIP_SUFFIX = "_flip"


def split_model_key(key: str) -> tuple[str, int | None]:
    """``efficientnet_lite0_96px`` -> ``("efficientnet_lite0", 96)``; else ``(key, None)``."""
    m = _SIZED.match(key)
    return (m["name"], int(m["size"])) if m else (key, None)


def resolve_model(store: Store, key: str, size: int | None = None) -> EmbeddingModel:
    """The model whose vectors are stored as ``key``: a derived model, or a registered one."""
    if is_derived_key(key):
        return DerivedModel(store, key)
    return get_model(key, size=size)


class DerivedModel(EmbeddingModel):
    """Embeds images as derived model ``key`` of ``store`` (bases' forward, then the transform)."""

    forward_pixels = None  # inputs are flat; each base splits its own batches

    def __init__(self, store: Store, key: str) -> None:
        self.derived = registry.load_derived(store, key)
        spec = self.derived.spec
        registry.check_bases(store, spec)
        self._key = key
        self.name = key
        self.dim = spec.dim
        self.version = spec.version
        self.bases: list[EmbeddingModel] = []
        for ref in spec.bases:
            name, size = split_model_key(ref.key)
            m = resolve_model(store, ref.key) if is_derived_key(ref.key) else get_model(name, size=size)
            if m.key != ref.key or m.version != ref.version:
                raise StaleBaseError(f"derived model {key!r} was built on {ref.key} version "
                                     f"{ref.version!r}; this code embeds it as {m.key} version "
                                     f"{m.version!r}: retrain or refit {key!r}")
            self.bases.append(m)
        self.default_size = self.bases[0].size
        super().__init__(self.bases[0].size)
        probe = Image.new("RGB", (8, 8))
        self._shapes = [tuple(m.preprocess(probe).shape) for m in self.bases]
        self._lens = [int(np.prod(s)) for s in self._shapes]

    @property
    def key(self) -> str:
        return self._key

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return torch.cat([m.preprocess(img).reshape(-1) for m in self.bases])

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        parts, off = [], 0
        for m, shape, n in zip(self.bases, self._shapes, self._lens, strict=True):
            parts.append(m.embed_batch(batch[:, off:off + n].reshape(-1, *shape)))
            off += n
        return torch.from_numpy(self.derived.apply(parts))


class FlipAveraged(EmbeddingModel):
    """``l2n(l2n(f(x)) + l2n(f(mirror x)))`` for a base model ``f``."""

    def __init__(self, base: EmbeddingModel) -> None:
        self.base = base
        self.name = base.name + FLIP_SUFFIX
        self.dim = base.dim
        self.default_size = base.default_size
        self.version = f"{base.version}-flipavg"
        self.forward_pixels = base.forward_pixels
        super().__init__(base.size)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        return self.base.preprocess(img)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        a = l2_normalize(self.base._forward(batch))
        b = l2_normalize(self.base._forward(torch.flip(batch, dims=[-1])))
        return torch.from_numpy(a + b)


def _flip_factory(base_name: str):
    def factory(size: int | None = None, **options) -> FlipAveraged:
        return FlipAveraged(get_model(base_name, size=size, **options))

    factory.__doc__ = f"{base_name} with test-time horizontal-flip averaging"
    return factory


def register_flip_models() -> None:
    """Register ``<name>_flip`` for each EfficientNet-Lite (called by the model registry)."""
    from imgsim_lab.models import efficientnet_lite
    from imgsim_lab.models.registry import _REGISTRY, register

    for name, variant in efficientnet_lite.VARIANTS.items():
        if name + FLIP_SUFFIX not in _REGISTRY:
            register(name + FLIP_SUFFIX, _flip_factory(name),
                     available=lambda i=variant.index: efficientnet_lite._available(i))
