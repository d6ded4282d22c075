"""ONNX Runtime int8 static quantization (QDQ) of a CNN export (``precision="int8"``).

Calibrated on ``CALIBRATION_IMAGES`` CIFAR-10 training images (seeded choice) through the
model's own preprocessing; weights int8 per channel, activations uint8. The result is
cached like the fp32 export (own file and checksum); its ``version`` ends in ``-int8``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgsim_lab.models.base import ModelUnavailableError

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 320
CALIBRATION_BATCH = 32
SEED = 0


def calibration_files(n: int = CALIBRATION_IMAGES, seed: int = SEED) -> list[Path]:
    """A seeded, class-balanced choice of CIFAR-10 training JPEGs from the data directory."""
    from imgsim_lab.config import data_dir

    root = data_dir() / "cifar10" / "train"
    classes = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise ModelUnavailableError(
            f"precision='int8' calibrates on CIFAR-10 training images; none under {root} "
            "(run `imgsim setup-cifar10` first)")
    rng = np.random.default_rng(seed)
    per = -(-n // len(classes))
    files: list[Path] = []
    for c in classes:
        imgs = sorted(c.glob("*.jpg"))
        files += [imgs[i] for i in rng.choice(len(imgs), size=min(per, len(imgs)), replace=False)]
    return files[:n]


def quantize_export(model: Any, fp32_path: Path) -> Callable[[Path], None]:
    """An ``export(path)`` writing the int8 QDQ quantization of ``fp32_path`` for ``model``."""

    def export(path: Path) -> None:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        files = calibration_files()
        batches = [np.stack([model.preprocess(Image.open(f).convert("RGB"))
                             for f in files[i:i + CALIBRATION_BATCH]])
                   for i in range(0, len(files), CALIBRATION_BATCH)]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._it = iter(batches)

            def get_next(self):
                b = next(self._it, None)
                return None if b is None else {"x": b}

        log.info("calibrating int8 quantization of %s on %d CIFAR-10 images", model.key, len(files))
        quantize_static(str(fp32_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax)

    return export
