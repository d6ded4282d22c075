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

import numpy as np
from PIL import Image

from imgsim_lab.adapters import registry
from imgsim_lab.adapters.spec import StaleBaseError, is_derived_key
from imgsim_lab.models import EmbeddingModel, get_model
from imgsim_lab.models.base import split_key
from imgsim_lab.models.flip import FLIP_SUFFIX, FlipAveraged  # noqa: F401 (re-exported)
from imgsim_lab.store import Store

split_model_key = split_key


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
        probes = [np.asarray(m.preprocess(probe)) for m in self.bases]
        self._shapes = [p.shape for p in probes]
        self._dtypes = [p.dtype for p in probes]
        self._lens = [int(np.prod(s)) for s in self._shapes]

    @property
    def key(self) -> str:
        return self._key

    def preprocess(self, img: Image.Image) -> np.ndarray:
        """Each base's input, flattened side by side (float32 holds uint8 pixels exactly)."""
        return np.concatenate([np.asarray(m.preprocess(img), np.float32).reshape(-1) for m in self.bases])

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        parts, off = [], 0
        batch = np.asarray(batch)
        for m, shape, dtype, n in zip(self.bases, self._shapes, self._dtypes, self._lens, strict=True):
            x = batch[:, off:off + n].reshape(-1, *shape).astype(dtype)
            parts.append(m.embed_batch(x))
            off += n
        return np.asarray(self.derived.apply(parts), np.float32)
