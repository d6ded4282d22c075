"""torch pieces of the CNN backends, imported only when torch runs or exports a model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)


def use_threads(n: int) -> None:
    """torch's intra-op pool at ``n`` threads."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
        log.debug("torch intra-op threads set to %d", n)


class Embedder(torch.nn.Module):
    """uint8 NHWC pixels -> normalized float NCHW -> ``features`` -> (n, d) (or, with
    ``flatten=False``, the features' own shape, e.g. a network's inner activations).

    The normalization ``(x - mean) * (1 / std)`` is the same float32 arithmetic the numpy
    preprocessing did, so it is part of the network (exported to ONNX with it) and the
    decode threads only resize. NHWC permuted to NCHW is channels_last in memory.
    """

    def __init__(self, features: Callable[[torch.Tensor], torch.Tensor] | torch.nn.Module,
                 mean: Sequence[float], std: Sequence[float], flatten: bool = True) -> None:
        super().__init__()
        self.features = features
        self.flatten = flatten
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 1, 1, 3))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).reshape(1, 1, 1, 3))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.to(torch.float32) - self.mean) * self.inv_std
        return x.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(self.normalize(x))
        return torch.flatten(y, 1) if self.flatten else y


class TorchRunner:
    """Eager torch forward of an :class:`Embedder` on numpy batches (fp32 or bf16 autocast)."""

    def __init__(self, module: Embedder, threads: int, precision: str = "fp32",
                 channels_last: bool = True) -> None:
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.channels_last = channels_last
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.threads = threads
        self.precision = precision

    def __call__(self, batch) -> torch.Tensor:
        use_threads(self.threads)
        x = torch.from_numpy(batch)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                     enabled=self.precision == "bf16"):
            if self.channels_last:
                y = self.module(x)
            else:  # NCHW-contiguous input, for the comparison in docs/models.md
                m = self.module
                y = torch.flatten(m.features(m.normalize(x).contiguous()), 1)
            return y.float().numpy()
