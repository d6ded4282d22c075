"""Seeded synthetic embeddings with the neighbour structure of real ones.

Isotropic Gaussian clusters in 1280 dimensions are useless for judging an index: every
point sits at almost the same similarity to its 10th and its 100th neighbour. Real
embeddings live near a low-dimensional manifold, so we draw clustered points in a small
latent space (``latent_dim`` <= 64), map them to ``dim`` with one fixed random linear
map, add a little isotropic noise and L2-normalize.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import faiss
import numpy as np
from tqdm.auto import tqdm

from imgsim_lab.store import NewImage, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic collection; the same spec and seed give the same vectors."""

    dim: int = 1280
    seed: int = 0
    latent_dim: int = 32      # intrinsic dimension of the manifold (<= 64)
    n_clusters: int = 512     # latent Gaussian clusters ("classes")
    cluster_spread: float = 0.55  # within-cluster std relative to the spread of centres
    noise: float = 0.25       # isotropic noise norm relative to the signal norm

    def __post_init__(self) -> None:
        if not 1 <= self.latent_dim <= 64:
            raise ValueError("latent_dim must be in 1..64")
        if self.dim < self.latent_dim:
            raise ValueError("dim must be >= latent_dim")


def generate(spec: SyntheticSpec, start: int, n: int) -> np.ndarray:
    """Vectors ``start .. start+n-1`` of the collection (each row depends only on its index)."""
    g = np.random.default_rng(spec.seed)
    centres = g.standard_normal((spec.n_clusters, spec.latent_dim)).astype(np.float32)
    proj = (g.standard_normal((spec.latent_dim, spec.dim)) / np.sqrt(spec.latent_dim)).astype(np.float32)
    out = np.empty((n, spec.dim), np.float32)
    block = 4096
    for s in range(0, n, block):
        first = start + s
        # one generator per block of global indices keeps rows independent of chunking
        rows = np.arange(first, min(start + n, first + block))
        parts = []
        for b in np.unique(rows // block):
            rb = np.random.default_rng([spec.seed, 1, int(b)])
            lo = int(b) * block
            cl = rb.integers(0, spec.n_clusters, block)
            lat = centres[cl] + spec.cluster_spread * rb.standard_normal(
                (block, spec.latent_dim), dtype=np.float32)
            x = lat @ proj
            noise = rb.standard_normal((block, spec.dim), dtype=np.float32)
            noise *= spec.noise * np.linalg.norm(x, axis=1, keepdims=True) / np.sqrt(spec.dim)
            x += noise
            sel = rows[(rows // block) == b] - lo
            parts.append(x[sel])
        x = np.concatenate(parts)
        faiss.normalize_L2(x)
        out[s : s + len(x)] = x
    return out


def synthetic_sha(seed: int, i: int) -> str:
    """The sha256 recorded for synthetic vector ``i``."""
    return hashlib.sha256(f"synthetic:{seed}:{i}".encode()).hexdigest()


def iter_chunks(spec: SyntheticSpec, n: int, chunk: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, vectors)`` chunks of the first ``n`` vectors."""
    for s in range(0, n, chunk):
        yield s, generate(spec, s, min(chunk, n - s))


def write_to_store(store: Store, model_key: str, n: int, spec: SyntheticSpec,
                   chunk: int = 8192, progress: bool = True) -> int:
    """Add the first ``n`` vectors as images (idempotent: sha256 from seed and index).

    Returns how many records were created now.
    """
    store.register_model(model_key, spec.dim, f"synthetic-{spec.latent_dim}-{spec.n_clusters}")
    created = 0
    with tqdm(total=n, desc=f"synthetic -> {model_key}", unit="vec", disable=not progress) as bar:
        for s, vecs in iter_chunks(spec, n, chunk):
            items = [NewImage(synthetic_sha(spec.seed, s + j), f"synthetic:{spec.seed}:{s + j}", 1, 1,
                              None, {model_key: v}) for j, v in enumerate(vecs)]
            created += sum(r.created for r in store.add_images(items))
            bar.update(len(vecs))
    return created


def neighbour_similarity(vectors: np.ndarray, n_queries: int = 200, ks: tuple[int, ...] = (10, 100),
                         seed: int = 0) -> dict[str, float]:
    """Mean exact similarity of the k-th neighbour (self excluded) of sampled queries.

    ``sim_at_10`` close to ``sim_at_100`` means the set is hard: neighbours are not separable.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    q = x[rng.choice(len(x), size=min(n_queries, len(x)), replace=False)]
    kmax = min(max(ks) + 1, len(x))
    d, _ = faiss.knn(q, x, kmax, metric=faiss.METRIC_INNER_PRODUCT)  # no copy of the vectors
    return {f"sim_at_{k}": float(d[:, k].mean()) for k in ks if k < kmax}
