"""Hybrid FAISS search over the KV store: exact in RAM when it fits, else compressed + re-rank.

``SimilarityIndex(store, model_key, IndexConfig(...))`` loads its snapshot or builds
from the store and catches up; :meth:`~SimilarityIndex.search` returns unique,
filtered :class:`Hit` objects with exact cosine scores. See ``docs/index.md``.
"""

from __future__ import annotations

from imgsim_lab.index.config import Hit, IndexConfig
from imgsim_lab.index.similarity import SimilarityIndex

__all__ = ["Hit", "IndexConfig", "SimilarityIndex"]
