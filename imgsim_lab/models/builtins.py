"""The built-in models, registered in this one place (see :func:`builtin_specs`)."""

from __future__ import annotations

import functools

from imgsim_lab.models import baselines, efficientnet_lite, torchvision_models
from imgsim_lab.models.flip import FLIP_SUFFIX, flip_factory
from imgsim_lab.models.spec import ModelSpec, always


def builtin_specs() -> list[ModelSpec]:
    """EfficientNet-Lite0/1/2 (each also ``_flip``: test-time flip averaging), the torchvision
    architectures and the two baselines."""
    specs = []
    for v in efficientnet_lite.VARIANTS.values():
        make = efficientnet_lite.factory(v)
        avail = functools.partial(efficientnet_lite.available, v.index)
        specs.append(ModelSpec(v.name, make, avail, make.__doc__ or ""))
        flip = flip_factory(make)
        specs.append(ModelSpec(v.name + FLIP_SUFFIX, flip, avail, flip.__doc__ or ""))
    for a in torchvision_models.ARCHS.values():
        make, avail = torchvision_models.factory(a)
        specs.append(ModelSpec(a.name, make, avail, make.__doc__ or ""))
    specs.append(ModelSpec("pixels", baselines.Pixels, always, "downsampled raw RGB, mean-centred"))
    specs.append(ModelSpec("color_hist", baselines.ColorHist, always, "joint 8x8x8 RGB histogram"))
    return specs
