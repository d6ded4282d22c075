"""torchvision ImageNet classifiers as embedding models (pooled penultimate layer).

Weights are never downloaded at run time. A model is usable when its torchvision
weights file is found, in this order:

1. the ``weights=PATH`` option of :func:`~imgsim_lab.models.get_model`;
2. ``$IMGSIM_WEIGHTS_<NAME>`` (e.g. ``IMGSIM_WEIGHTS_RESNET50=/path/resnet50-11ad3fa6.pth``);
3. torchvision's cache ``$TORCH_HOME/hub/checkpoints/<standard file name>`` (where
   ``torchvision.models.resnet50(weights="DEFAULT")`` saves it on a machine online).

Otherwise building the model raises :class:`ModelUnavailableError` saying how to get it.
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

import torch
from PIL import Image
from torch import nn

from imgsim_lab.models.base import (
    EmbeddingModel,
    ModelUnavailableError,
    pil_to_normalized_chw,
    resize_center_crop,
    use_all_cores,
)
from imgsim_lab.models.registry import register

log = logging.getLogger(__name__)

PREPROCESS_VERSION = "imagenet-bilinear-crop-v1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENV_PREFIX = "IMGSIM_WEIGHTS_"


def _strip_resnet(m: nn.Module) -> None:
    m.fc = nn.Identity()


def _strip_classifier(m: nn.Module) -> None:
    m.classifier = nn.Identity()


def _strip_convnext(m: nn.Module) -> None:
    m.classifier[-1] = nn.Identity()  # keep its LayerNorm + Flatten


@dataclass(frozen=True)
class TVArch:
    """A torchvision architecture: its embedding dim and how to drop the classifier."""

    name: str
    dim: int
    strip_head: Callable[[nn.Module], None]
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
    """torchvision's download cache: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


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


class TorchvisionModel(EmbeddingModel):
    """A torchvision classifier without its last linear layer, on local weights."""

    def __init__(self, arch: TVArch, size: int | None = None, *,
                 weights: str | os.PathLike[str] | None = None, channels_last: bool = True,
                 num_threads: int | None = None) -> None:
        from torchvision import models

        self.name = arch.name
        self.dim = arch.dim
        self.default_size = arch.default_size
        super().__init__(size)
        path = find_weights(arch.name, weights)
        use_all_cores(num_threads)
        net = models.get_model(arch.name, weights=None)
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and "fc.weight" not in state:
            state = state["state_dict"]
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelUnavailableError(f"{arch.name}: {path} is not a {arch.name} "
                                        f"state dict: {exc}") from exc
        arch.strip_head(net)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net
        self.weights_path = path
        self.version = f"{path.stem}-{_sha256_prefix(path)}-{PREPROCESS_VERSION}"
        self._mean = [255.0 * v for v in IMAGENET_MEAN]
        self._std = [255.0 * v for v in IMAGENET_STD]
        log.info("built %s at %d px from %s", self.name, self.size, path)

    forward_pixels = 16 * 160 * 160

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """RGB, resize shorter side + center crop to ``size``, ImageNet mean/std: (3,S,S)."""
        img = resize_center_crop(img, self.size, Image.Resampling.BILINEAR)
        return pil_to_normalized_chw(img, self._mean, self._std)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return torch.flatten(self.net(batch), 1)


def _make(arch: TVArch):
    def factory(size: int | None = None, **options) -> TorchvisionModel:
        return TorchvisionModel(arch, size, **options)

    def available() -> bool:
        try:
            find_weights(arch.name)
            return True
        except ModelUnavailableError:
            return False

    factory.__doc__ = f"torchvision {arch.name}, ImageNet weights from a local file, {arch.dim}-d"
    return factory, available


for _a in ARCHS.values():
    _f, _avail = _make(_a)
    register(_a.name, _f, available=_avail)
