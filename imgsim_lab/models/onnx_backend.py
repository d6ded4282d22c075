"""Optional ONNX Runtime backend for a torch feature extractor (``backend="onnxruntime"``).

Needs the ``onnx`` and ``onnxruntime`` packages (not core dependencies). The module is
exported once per (model, size) into a temporary file and run by a CPU session.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from imgsim_lab.models.base import ModelUnavailableError

log = logging.getLogger(__name__)


class OrtRunner:
    """Runs ``module(x) -> (n, d)`` through ONNX Runtime with ``threads`` intra-op threads."""

    def __init__(self, module: torch.nn.Module, example: torch.Tensor, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelUnavailableError(
                "backend='onnxruntime' needs `pip install onnx onnxruntime`") from exc
        with tempfile.TemporaryDirectory(prefix="imgsim-onnx-") as tmp:
            path = Path(tmp) / "model.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (example,), str(path), input_names=["x"],
                                  output_names=["y"], dynamo=False,
                                  dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
        self.version = f"ort{ort.__version__}"
        log.info("exported %s to ONNX Runtime %s", type(module).__name__, ort.__version__)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.detach().float().numpy())
        return torch.from_numpy(self.session.run(None, {"x": x})[0])
