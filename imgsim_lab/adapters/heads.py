"""Adapter heads (linear, MLP) and the metric-learning losses they are trained with (torch).

Losses, all on L2-normalized embeddings:

- ``cos_softmax`` — normalized-proxy classification (NormFace / CosFace): one learned
  proxy per class, logits ``s · (cos(e, p_c) − m·[c = y])``, cross-entropy;
- ``proxy_anchor`` — Proxy-Anchor (Kim et al., CVPR 2020): each proxy pulls its class's
  embeddings of the batch and pushes the others, ``α = 32``, margin ``δ = 0.1``;
- ``supcon`` — supervised contrastive (Khosla et al., NeurIPS 2020) over the batch,
  temperature ``τ``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

HEAD_KINDS = ("linear", "mlp")
LOSSES = ("cos_softmax", "proxy_anchor", "supcon")


class Head(nn.Module):
    """``linear``: one affine map; ``mlp``: affine → batch norm → ReLU → dropout → affine."""

    def __init__(self, kind: str, d_in: int, dim: int, hidden: int = 1024, dropout: float = 0.1) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.net = nn.Linear(d_in, dim)
        else:
            self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                     nn.Dropout(dropout), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)

    def export(self) -> dict[str, np.ndarray]:
        """Plain float32 matrices for :func:`imgsim_lab.adapters.transforms.apply` (BN folded)."""
        with torch.no_grad():
            if self.kind == "linear":
                lin = self.net
                return {"w": lin.weight.T.contiguous().numpy().copy(), "b": lin.bias.numpy().copy()}
            l1, bn, _, _, l2 = self.net
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            w1 = (l1.weight.T * s).contiguous()
            b1 = (l1.bias - bn.running_mean) * s + bn.bias
            return {"w1": w1.numpy().copy(), "b1": b1.numpy().copy(),
                    "w2": l2.weight.T.contiguous().numpy().copy(), "b2": l2.bias.numpy().copy()}


class CosSoftmaxLoss(nn.Module):
    def __init__(self, n_classes: int, dim: int, scale: float = 16.0, margin: float = 0.1) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(n_classes, dim) / math.sqrt(dim))
        self.scale, self.margin = scale, margin

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cos = emb @ F.normalize(self.proxies, dim=1).T
        cos = cos - self.margin * F.one_hot(y, cos.shape[1]).to(cos.dtype)
        return F.cross_entropy(self.scale * cos, y)


class ProxyAnchorLoss(nn.Module):
    def __init__(self, n_classes: int, dim: int, alpha: float = 32.0, delta: float = 0.1) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")
        self.alpha, self.delta = alpha, delta

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cos = emb @ F.normalize(self.proxies, dim=1).T            # (B, C)
        pos = F.one_hot(y, cos.shape[1]).bool()
        pos_exp = torch.exp(-self.alpha * (cos - self.delta)).masked_fill(~pos, 0.0)
        neg_exp = torch.exp(self.alpha * (cos + self.delta)).masked_fill(pos, 0.0)
        with_pos = pos.any(dim=0)
        pos_term = torch.log1p(pos_exp.sum(dim=0))[with_pos].sum() / with_pos.sum().clamp_min(1)
        neg_term = torch.log1p(neg_exp.sum(dim=0)).sum() / cos.shape[1]
        return pos_term + neg_term


class SupConLoss(nn.Module):
    def __init__(self, n_classes: int, dim: int, temperature: float = 0.1) -> None:
        super().__init__()
        self.t = temperature

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sim = emb @ emb.T / self.t
        eye = torch.eye(len(y), dtype=torch.bool, device=emb.device)
        sim = sim.masked_fill(eye, -1e9)
        pos = (y[:, None] == y[None, :]) & ~eye
        logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
        n_pos = pos.sum(dim=1)
        keep = n_pos > 0
        return -((logp * pos).sum(dim=1)[keep] / n_pos[keep]).mean()


def make_loss(name: str, n_classes: int, dim: int, **options: float) -> nn.Module:
    """The loss ``name`` (see the module docstring) for ``n_classes`` and embedding ``dim``."""
    table = {"cos_softmax": CosSoftmaxLoss, "proxy_anchor": ProxyAnchorLoss, "supcon": SupConLoss}
    if name not in table:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    return table[name](n_classes, dim, **options)
