"""Query expansion and database-side augmentation: training-free re-ranking over neighbours.

Both replace a vector by a weighted mean of itself and its nearest stored neighbours,
then rank again (Radenović et al., "Fine-tuning CNN image retrieval with no human
annotation", TPAMI 2018):

- **αQE** (:func:`expand`) moves a *query* towards its top-``n`` results, weight
  ``max(s, 0) ** alpha`` per result of cosine ``s``; the query itself weighs 1.
- **DBA** (:func:`augment_database`) does the same to every *database* vector with its
  own top-``n`` database neighbours (itself excluded), so clusters tighten before any
  query arrives. It uses the database only: no query is ever seen.

Inputs are L2-normalized float32 rows; outputs are too.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from imgsim_lab.adapters.transforms import l2n
from imgsim_lab.index.tune import faiss_threads


@dataclass(frozen=True)
class ExpansionConfig:
    """``n`` neighbours (0: off) and the exponent ``alpha`` of their cosine weights."""

    n: int = 0
    alpha: float = 3.0

    def __post_init__(self) -> None:
        if self.n < 0:
            raise ValueError(f"expansion n must be >= 0, got {self.n}")
        if not np.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"expansion alpha must be a finite number >= 0, got {self.alpha}")

    @property
    def enabled(self) -> bool:
        return self.n > 0


def expand(q: np.ndarray, neighbours: np.ndarray, sims: np.ndarray, alpha: float) -> np.ndarray:
    """αQE of queries ``q`` (m, d) with their top-n ``neighbours`` (m, n, d) and cosines (m, n).

    A neighbour of cosine <= 0 weighs 0, and so does a missing one (padded, cosine ``-inf``
    or NaN).
    """
    q = np.asarray(q, np.float32)
    neighbours = np.asarray(neighbours, np.float32)
    if q.ndim != 2 or neighbours.shape[:1] != q.shape[:1] or neighbours.shape[2:] != q.shape[1:]:
        raise ValueError(f"expand: queries {q.shape} and neighbours {neighbours.shape} do not match")
    s = np.nan_to_num(np.asarray(sims, np.float32), nan=0.0, neginf=0.0, posinf=0.0)
    w = np.where(s > 0, np.maximum(s, 0.0) ** np.float32(alpha), 0.0).astype(np.float32)
    return l2n(q + np.einsum("mn,mnd->md", w, neighbours))


def _expand_rows(q: np.ndarray, db: np.ndarray, n: int, alpha: float, chunk: int,
                 skip_self: bool) -> np.ndarray:
    """αQE of each row of ``q`` with its top-``n`` rows of ``db`` (exact search, in chunks).

    ``skip_self``: ``q`` is ``db``, and a row is never its own neighbour, wherever it ranks.
    """
    index = faiss.IndexFlatIP(db.shape[1])
    index.add(db)
    out = np.empty_like(q)
    with faiss_threads():
        for s in range(0, len(q), chunk):
            part = q[s:s + chunk]
            sims, rows = index.search(part, n + skip_self)
            if skip_self:
                own = np.arange(s, s + len(part))[:, None]
                first = np.argsort(rows == own, axis=1, kind="stable")[:, :n]  # the first n others
                rows = np.take_along_axis(rows, first, axis=1)
                sims = np.take_along_axis(sims, first, axis=1)
            sims = np.where(rows >= 0, sims, -np.inf)  # faiss pads missing results with -1
            out[s:s + len(part)] = expand(part, db[np.maximum(rows, 0)], sims, alpha)
    return out


def augment_database(db: np.ndarray, n: int, alpha: float = 3.0, chunk: int = 4096) -> np.ndarray:
    """DBA: each database row expanded with its own top-``n`` database neighbours (itself excluded)."""
    db = l2n(db)
    if n <= 0 or len(db) < 2:
        return db
    return _expand_rows(db, db, min(n, len(db) - 1), alpha, chunk, skip_self=True)


def expand_against(q: np.ndarray, db: np.ndarray, n: int, alpha: float = 3.0,
                   chunk: int = 4096) -> np.ndarray:
    """αQE of queries ``q`` against the rows of ``db`` (exact search), for offline evaluation."""
    q = l2n(q)
    if n <= 0 or not len(db):
        return q
    db = l2n(db)
    return _expand_rows(q, db, min(n, len(db)), alpha, chunk, skip_self=False)
