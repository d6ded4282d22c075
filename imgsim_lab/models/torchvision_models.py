"""torchvision ImageNet classifiers as embedding models (pooled penultimate layer).

Weights are never downloaded at run time. A model is usable when its torchvision
weights file is found, in this order:

1. the ``weights=PATH`` option of :func:`~imgsim_lab.models.get_model`;
2. ``$IMGSIM_WEIGHTS_<NAME>`` (e.g. ``IMGSIM_WEIGHTS_RESNET50=/path/resnet50-11ad3fa6.pth``);
3. torchvision's cache ``$TORCH_HOME/hub/checkpoints/<standard file name>`` (where
   ``torchvision.models.resnet50(weights="DEFAULT")`` saves it on a machine online).

Otherwise building the model raises :class:`ModelUnavailableError` saying how to get it.
The forward runs on ONNX Runtime by default (exported once, see :mod:`~imgsim_lab.models.cnn`);
finding the standard file names in the torch cache imports torchvision.
Preprocessing: RGB, shorter side resized to ``size`` (bilinear), center crop, ImageNet
mean/std. Default size 224 (their training resolution); no pretrained weights were
available here to measure a smaller size's accuracy, so pass ``size=160`` for speed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imgsim_lab.models.base import ModelUnavailableError
from imgsim_lab.models.cnn import CNNModel
from imgsim_lab.models.onnx_backend import OrtOptions, is_valid

log = logging.getLogger(__name__)

PREPROCESS_VERSION = "imagenet-bilinear-crop-v1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENV_PREFIX = "IMGSIM_WEIGHTS_"


def _strip_resnet(m: Any) -> None:
    from torch import nn

    m.fc = nn.Identity()


def _strip_classifier(m: Any) -> None:
    from torch import nn

    m.classifier = nn.Identity()


def _strip_convnext(m: Any) -> None:
    from torch import nn

    m.classifier[-1] = nn.Identity()  # keep its LayerNorm + Flatten


@dataclass(frozen=True)
class TVArch:
    """A torchvision architecture: its embedding dim and how to drop the classifier."""

    name: str
    dim: int
    strip_head: Callable[[Any], None]
    default_size: int = 224


ARCHS = {a.name: a for a in (
    TVArch("resnet18", 512, _strip_resnet),
    TVArch("resnet34", 512, _strip_resnet),
    TVArch("resnet50", 2048, _strip_resnet),
    TVArch("resnet101", 2048, _strip_resnet),
    TVArch("efficientnet_b0", 1280, _strip_classifier),
    TVArch("mobilenet_v3_large", 960, _strip_classifier),
    TVArch("convnext_tiny", 768, _strip_convnext),
)}


def checkpoint_dir() -> Path:
    """torchvision's download cache: ``$TORCH_HOME/hub/checkpoints`` (as ``torch.hub.get_dir``
    resolves it: ``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def standard_files(arch: str) -> list[tuple[str, str]]:
    """(file name, URL) of torchvision's ImageNet weights for ``arch``, DEFAULT first."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    default = enum.DEFAULT
    ordered = [default] + [w for w in enum if w is not default]
    return [(w.url.rsplit("/", 1)[-1], w.url) for w in ordered]


def env_var(name: str) -> str:
    """``IMGSIM_WEIGHTS_<NAME>`` for model ``name``."""
    return ENV_PREFIX + name.upper().replace("-", "_").replace(".", "_")


def find_weights(arch: str, weights: str | os.PathLike[str] | None = None) -> Path:
    """Locate the weights file of ``arch`` (option, env var, torch cache) or explain how."""
    for source, value in (("weights option", weights), (env_var(arch), os.environ.get(env_var(arch)))):
        if value:
            p = Path(value).expanduser()
            if not p.is_file():
                raise ModelUnavailableError(f"{arch}: {source} points to {p}, which is not a file")
            return p
    files = standard_files(arch)
    for fname, _ in files:
        p = checkpoint_dir() / fname
        if p.is_file():
            return p
    fname, url = files[0]
    raise ModelUnavailableError(
        f"{arch}: no weights file (this never downloads). Get {fname} on a machine with "
        f"internet, e.g. `curl -L -o {checkpoint_dir() / fname} {url}` or "
        f"`python -c \"import torchvision; torchvision.models.{arch}(weights='DEFAULT')\"`, "
        f"and copy it to {checkpoint_dir()}/ ; or set {env_var(arch)}=/path/to/{fname} "
        f"or pass weights=PATH.")


def _sha256_prefix(path: Path, n: int = 8) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


class TorchvisionModel(CNNModel):
    """A torchvision classifier without its last linear layer, on local weights."""

    mean = tuple(255.0 * v for v in IMAGENET_MEAN)  # type: ignore[assignment]
    std = tuple(255.0 * v for v in IMAGENET_STD)  # type: ignore[assignment]
    resample = Image.Resampling.BILINEAR

    def __init__(self, arch: TVArch, size: int | None = None, *,
                 weights: str | os.PathLike[str] | None = None, channels_last: bool = True,
                 num_threads: int | None = None, backend: str | None = None,
                 precision: str = "fp32", ort: OrtOptions | None = None) -> None:
        self.name = arch.name
        self.dim = arch.dim
        self.default_size = arch.default_size
        self.arch = arch
        super().__init__(size)
        path = find_weights(arch.name, weights)
        self.weights_path = path
        self.base_version = f"{path.stem}-{_sha256_prefix(path)}-{PREPROCESS_VERSION}"
        self._setup(backend=backend, precision=precision, num_threads=num_threads,
                    channels_last=channels_last, ort=ort)
        if self.backend == "torch" or not is_valid(self.onnx_path()):
            self.torch_module()  # checks the state dict now (a valid export was checked before)
        log.info("%s at %d px from %s, backend %s", self.name, self.size, path, self.backend)

    def build_features(self) -> Any:
        import torch
        from torchvision import models

        net = models.get_model(self.arch.name, weights=None)
        state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and "fc.weight" not in state:
            state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelUnavailableError(f"{self.arch.name}: {self.weights_path} is not a "
                                        f"{self.arch.name} state dict: {exc}") from exc
        self.arch.strip_head(net)
        return net.eval()


def factory(arch: TVArch):
    """``(factory(size=None, **options), available())`` for ``arch``."""

    def make(size: int | None = None, **options: Any) -> TorchvisionModel:
        return TorchvisionModel(arch, size, **options)

    def available() -> bool:
        ckpt = checkpoint_dir()
        if not os.environ.get(env_var(arch.name)) and not (
                ckpt.is_dir() and any(ckpt.glob(f"{arch.name}*.pth"))):
            return False  # decided without importing torchvision
        try:
            find_weights(arch.name)
            return True
        except ModelUnavailableError:
            return False

    make.__doc__ = f"torchvision {arch.name}, ImageNet weights from a local file, {arch.dim}-d"
    return make, available
