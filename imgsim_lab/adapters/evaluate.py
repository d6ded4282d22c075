"""Retrieval quality of arrays of vectors, and compact sign codes ranked by Hamming distance.

Used by the cached-feature experiment (``scripts/cifar10_adapters.py``); the notebook
benchmark computes the same metrics through :mod:`imgsim_lab.evaluation`.
"""

from __future__ import annotations

import time

import numpy as np

from imgsim_lab import evaluation as ev
from imgsim_lab.expansion import ExpansionConfig, augment_database, expand_against


def ranking_metrics(db: np.ndarray, db_y: np.ndarray, q: np.ndarray, q_y: np.ndarray,
                    map_depth: int = 1000, full_map: bool = True, chunk: int = 250) -> dict[str, float]:
    """P@1/5/10, mAP@map_depth, 5-NN accuracy and (``full_map``) mAP over the whole database.

    Inner-product ranking (cosine for L2-normalized rows; for ±1 codes the same order as
    Hamming distance); equal scores are ordered by database row, as :func:`ev.exact_topk`.
    With ``full_map`` one full sort per query serves every metric.
    """
    if not full_map:
        rows, _ = ev.exact_topk(db, q, map_depth)
        labels = np.where(rows == ev.PAD, ev.PAD, db_y[np.maximum(rows, 0)])
        return ev.retrieval_metrics(q_y, labels, (1, 5, 10), map_depth, knn_k=5)
    db = np.ascontiguousarray(db, np.float32)
    n_rel = np.bincount(db_y, minlength=int(max(db_y.max(), q_y.max())) + 1)
    parts: dict[str, list[np.ndarray]] = {"P@1": [], "P@5": [], "P@10": [], f"mAP@{map_depth}": [],
                                          "knn5_accuracy": [], "mAP@all": []}
    ranks = np.arange(1, db.shape[0] + 1)
    for s in range(0, len(q), chunk):
        qy = q_y[s:s + chunk]
        order = np.argsort(-(q[s:s + chunk] @ db.T), axis=1, kind="stable")
        labels = db_y[order]
        rel = labels == qy[:, None]
        for k in (1, 5, 10):
            parts[f"P@{k}"].append(ev.precision_at(rel, k))
        parts[f"mAP@{map_depth}"].append(ev.average_precision_at(rel, map_depth))
        parts["knn5_accuracy"].append(ev.knn_predict(labels, 5) == qy)
        hits = np.cumsum(rel, axis=1)
        total = n_rel[qy]
        parts["mAP@all"].append(np.divide((hits / ranks * rel).sum(axis=1), total,
                                          out=np.zeros(len(total)), where=total > 0))
    return {k: float(np.concatenate(v).mean()) for k, v in parts.items()}


def map_all(db: np.ndarray, db_y: np.ndarray, q: np.ndarray, q_y: np.ndarray, chunk: int = 500) -> float:
    """mAP over the full ranking of the database (every relevant item counts)."""
    db = np.ascontiguousarray(db, np.float32)
    aps = []
    n_rel = np.bincount(db_y, minlength=int(max(db_y.max(), q_y.max())) + 1)
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ db.T
        order = np.argsort(-sim, axis=1, kind="stable")
        rel = db_y[order] == q_y[s:s + chunk, None]
        hits = np.cumsum(rel, axis=1)
        ranks = np.arange(1, db.shape[0] + 1)
        total = n_rel[q_y[s:s + chunk]]
        aps.append(np.divide((hits / ranks * rel).sum(axis=1), total,
                             out=np.zeros(len(total)), where=total > 0))
    return float(np.concatenate(aps).mean()) if aps else 0.0


def itq(db: np.ndarray, bits: int, iterations: int = 50, seed: int = 0
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITQ (Gong & Lazebnik, CVPR 2011): PCA to ``bits`` dims, then the rotation that best
    fits binary codes. Returns ``(mean, pca, rotation)``; codes = sign((x - mean) @ pca @ R)."""
    x = np.asarray(db, np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    evals, evecs = np.linalg.eigh(xc.T @ xc)
    pca = evecs[:, np.argsort(evals)[::-1][:bits]]
    v = xc @ pca
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.normal(size=(bits, bits)))
    for _ in range(iterations):
        b = np.sign(v @ r)
        b[b == 0] = 1
        u, _, wt = np.linalg.svd(b.T @ v)
        r = (u @ wt).T
    return mean.astype(np.float32), pca.astype(np.float32), r.astype(np.float32)


def sign_codes(x: np.ndarray, mean: np.ndarray, pca: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """±1 float32 codes (``bits`` columns); inner product = bits − 2 · Hamming distance."""
    c = np.sign((np.asarray(x, np.float32) - mean) @ pca @ rot)
    c[c == 0] = 1
    return c.astype(np.float32)


def expansion_metrics(db: np.ndarray, db_y: np.ndarray, q: np.ndarray, q_y: np.ndarray,
                      qe: ExpansionConfig, dba: ExpansionConfig | None = None,
                      full_map: bool = True) -> dict[str, float]:
    """:func:`ranking_metrics` after DBA of the database (``dba``) and αQE of the queries (``qe``).

    The database side uses the database only; each query is expanded with its own results.
    Adds ``seconds_dba`` and ``seconds_qe`` (wall time of the two steps).
    """
    t0 = time.perf_counter()
    db2 = augment_database(db, dba.n, dba.alpha) if dba is not None and dba.enabled else db
    t1 = time.perf_counter()
    q2 = expand_against(q, db2, qe.n, qe.alpha)
    t2 = time.perf_counter()
    out = ranking_metrics(db2, db_y, q2, q_y, full_map=full_map)
    return {**out, "seconds_dba": round(t1 - t0, 2), "seconds_qe": round(t2 - t1, 2)}
