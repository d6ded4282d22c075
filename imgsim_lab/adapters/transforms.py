"""Fitting and applying derived models on arrays of base vectors (pure numpy).

Every derived model maps the L2-normalized vectors of its bases to L2-normalized
vectors; ``apply`` does it for every kind from the kind's tensors:

- ``center``: ``x - mean`` (the database mean);
- ``whiten``: ``(x - mean) @ P`` with ``P = V_k diag((1 - s) λ_k + s λ̄)^(-1/2)``, the top
  ``k`` principal axes of the database, eigenvalues shrunk towards their mean by
  ``s`` (``shrinkage``: 0 = full whitening, 1 = plain PCA projection);
- ``concat``: the bases' vectors side by side, each scaled by its weight;
- ``adapter``: a trained head (:mod:`imgsim_lab.adapters.heads`), exported as plain
  matrices: ``linear`` = ``x @ W + b``, ``mlp`` = ``relu(x @ W1 + b1) @ W2 + b2``
  (batch norm folded into ``W1``/``b1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imgsim_lab.adapters.spec import DerivedModelError


def l2n(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length, C-contiguous float32."""
    x = np.asarray(x, np.float32)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps),
                                dtype=np.float32)


def fit_center(x: np.ndarray) -> dict[str, np.ndarray]:
    """Tensors of database-mean centring."""
    return {"mean": np.asarray(x, np.float64).mean(axis=0).astype(np.float32)}


def fit_whiten(x: np.ndarray, dim: int | None = None, shrinkage: float = 0.0) -> dict[str, np.ndarray]:
    """Tensors of PCA whitening fitted on ``x`` (rows = database vectors)."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    dim = int(dim or d)
    if not 0 < dim <= min(n, d):
        raise DerivedModelError(f"whitening dim must be in 1..{min(n, d)}, got {dim}")
    if not 0.0 <= shrinkage <= 1.0:
        raise DerivedModelError(f"shrinkage must be in [0, 1], got {shrinkage}")
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / max(1, n - 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:dim]
    lam = np.maximum(evals[order], 0.0)
    lam_reg = (1.0 - shrinkage) * lam + shrinkage * lam.mean() + 1e-9 * max(lam.max(), 1e-12)
    proj = evecs[:, order] / np.sqrt(lam_reg)
    return {"mean": mean.astype(np.float32), "proj": proj.astype(np.float32)}


def fit_concat(dims: Sequence[int], weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Tensors of a concatenation: one weight per base (default 1 each)."""
    w = np.ones(len(dims), np.float32) if weights is None else np.asarray(weights, np.float32)
    if w.shape != (len(dims),) or not np.all(w > 0):
        raise DerivedModelError(f"concat needs one positive weight per base, got {weights}")
    return {"weights": w}


def apply(kind: str, tensors: dict[str, np.ndarray], bases: Sequence[np.ndarray]) -> np.ndarray:
    """The derived vectors (n, dim), L2-normalized, of base vectors ``bases`` (one array each)."""
    if not bases:
        raise DerivedModelError("a derived model needs at least one base")
    n = bases[0].shape[0]
    if any(b.shape[0] != n for b in bases):
        raise DerivedModelError(f"bases hold different numbers of vectors: {[b.shape for b in bases]}")
    x = np.asarray(bases[0], np.float32)
    if kind == "center":
        return l2n(x - tensors["mean"])
    if kind == "whiten":
        return l2n((x - tensors["mean"]) @ tensors["proj"])
    if kind == "concat":
        w = tensors["weights"]
        if len(w) != len(bases):
            raise DerivedModelError(f"concat was fitted on {len(w)} bases, got {len(bases)}")
        return l2n(np.concatenate([np.asarray(b, np.float32) * wi for b, wi in zip(bases, w, strict=True)],
                                  axis=1))
    if kind == "adapter":
        if "w1" in tensors:
            h = np.maximum(x @ tensors["w1"] + tensors["b1"], 0.0)
            return l2n(h @ tensors["w2"] + tensors["b2"])
        return l2n(x @ tensors["w"] + tensors["b"])
    raise DerivedModelError(f"unknown derived model kind {kind!r}")


def output_dim(kind: str, tensors: dict[str, np.ndarray], base_dims: Sequence[int]) -> int:
    """Dimension of ``apply``'s output."""
    if kind == "center":
        return int(base_dims[0])
    if kind == "whiten":
        return int(tensors["proj"].shape[1])
    if kind == "concat":
        return int(sum(base_dims))
    if kind == "adapter":
        return int((tensors["w2"] if "w1" in tensors else tensors["w"]).shape[1])
    raise DerivedModelError(f"unknown derived model kind {kind!r}")
