"""Retrieval metrics for image-similarity benchmarks (pure numpy, no I/O).

Inputs are rankings: ``result_labels[q, r]`` is the label of query ``q``'s ``r``-th result
(best first) and ``result_ids[q, r]`` its database id. Rows shorter than the requested
depth are padded with :data:`PAD` (``-1``, never a valid label or id). A result is
*relevant* when its label equals the query's label.

Definitions (all averaged over queries, every query weighing the same):

- **precision@k** = (relevant among the top ``k``) / ``k``; a missing result counts as
  not relevant, so a database smaller than ``k`` cannot score 1.
- **AP@R** (``R`` = 1000 for mAP@1000) = ``(1 / G_R) * sum_{r<=R} P@r * rel_r``, where
  ``rel_r`` is 1 when the ``r``-th result is relevant and ``G_R`` is the number of relevant
  items *retrieved within the top R* (not all relevant items in the database); a query
  with no relevant item in its top ``R`` has AP 0. This is the "mAP@1000" of the
  CIFAR-10 retrieval literature (HashNet, Cao et al., ICCV 2017, and the DeepHash code's
  ``CalcTopMap``; also used by DPSH/DSDH/CSQ), chosen so numbers are comparable with it.
  With ``R`` >= the database size it equals the ordinary (full-ranking) AP.
- **kNN accuracy** (``k`` = 5): the predicted label is the most frequent label among the
  top ``k``; ties are broken by the nearest, i.e. the tied label whose best-ranked result
  comes first.
- **recall@k against exact search**: ``|index top-k ∩ exact top-k| / |exact top-k|``
  (ids), i.e. how much of the true neighbour set an approximate index returns.
- **latency p50/p95**: percentiles (linear interpolation) of per-query seconds, in ms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Padding for missing results (never a valid label code or id).
PAD = -1

__all__ = [
    "PAD", "average_precision_at", "encode_labels", "exact_topk", "knn_accuracy",
    "knn_predict", "latency_percentiles", "mean_average_precision", "per_class_precision",
    "precision_at", "recall_against", "relevance", "retrieval_metrics",
]


def encode_labels(labels: Sequence[str | None], classes: Sequence[str] | None = None
                  ) -> tuple[np.ndarray, list[str]]:
    """Labels as int codes (``PAD`` for None or unknown) and the class list used."""
    if classes is None:
        classes = sorted({lab for lab in labels if lab is not None})
    index = {c: i for i, c in enumerate(classes)}
    codes = np.array([index.get(lab, PAD) if lab is not None else PAD for lab in labels], np.int64)
    return codes, list(classes)


def relevance(query_labels: np.ndarray, result_labels: np.ndarray) -> np.ndarray:
    """Boolean (n_queries, depth): result has the query's label (padding never does)."""
    q = np.asarray(query_labels).reshape(-1, 1)
    r = np.asarray(result_labels)
    if r.ndim != 2 or r.shape[0] != q.shape[0]:
        raise ValueError(f"result_labels must be (n_queries={q.shape[0]}, depth), got {r.shape}")
    return (r == q) & (r != PAD) & (q != PAD)


def precision_at(rel: np.ndarray, k: int) -> np.ndarray:
    """Per-query precision@k from a relevance matrix (missing columns count as misses)."""
    if k <= 0:
        raise ValueError("k must be positive")
    return rel[:, :k].sum(axis=1) / float(k)


def average_precision_at(rel: np.ndarray, depth: int) -> np.ndarray:
    """Per-query AP over the top ``depth``, normalized by the relevant items retrieved there."""
    r = rel[:, :depth].astype(np.float64)
    hits = np.cumsum(r, axis=1)
    ranks = np.arange(1, r.shape[1] + 1, dtype=np.float64)
    found = hits[:, -1] if r.shape[1] else np.zeros(r.shape[0])
    sums = (hits / ranks * r).sum(axis=1)
    return np.divide(sums, found, out=np.zeros_like(sums), where=found > 0)


def mean_average_precision(rel: np.ndarray, depth: int = 1000) -> float:
    """mAP@depth (see the module docstring)."""
    return float(average_precision_at(rel, depth).mean()) if len(rel) else 0.0


def knn_predict(result_labels: np.ndarray, k: int = 5) -> np.ndarray:
    """Majority label among the top ``k`` per row; ties go to the nearest; ``PAD`` if none."""
    top = np.asarray(result_labels)[:, :k]
    out = np.full(top.shape[0], PAD, np.int64)
    for i, row in enumerate(top):
        row = row[row != PAD]
        if not len(row):
            continue
        values, first, counts = np.unique(row, return_index=True, return_counts=True)
        best = counts == counts.max()
        out[i] = values[best][np.argmin(first[best])]
    return out


def knn_accuracy(query_labels: np.ndarray, result_labels: np.ndarray, k: int = 5) -> float:
    """Share of queries whose ``k``-NN majority label (ties: nearest) is their own label."""
    q = np.asarray(query_labels)
    return float((knn_predict(result_labels, k) == q).mean()) if len(q) else 0.0


def recall_against(result_ids: np.ndarray, exact_ids: np.ndarray, k: int = 10) -> float:
    """Mean ``|approx top-k ∩ exact top-k| / |exact top-k|`` over queries (ids, PAD ignored)."""
    approx, exact = np.asarray(result_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    if approx.shape[0] != exact.shape[0]:
        raise ValueError("result_ids and exact_ids need the same number of queries")
    scores = []
    for a, e in zip(approx, exact, strict=True):
        truth = set(e[e != PAD].tolist())
        if truth:
            scores.append(len(truth.intersection(a[a != PAD].tolist())) / len(truth))
    return float(np.mean(scores)) if scores else 0.0


def latency_percentiles(seconds: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50, p95 and mean of per-query latencies, in milliseconds."""
    s = np.asarray(seconds, np.float64) * 1000.0
    if not len(s):
        return {"p50_ms": 0.0, "p95_ms": 0.0, "mean_ms": 0.0}
    return {"p50_ms": float(np.percentile(s, 50)), "p95_ms": float(np.percentile(s, 95)),
            "mean_ms": float(s.mean())}


def per_class_precision(query_labels: np.ndarray, rel: np.ndarray, classes: Sequence[str],
                        ks: Sequence[int] = (1, 5, 10)) -> dict[str, dict[str, float]]:
    """``{class: {"P@k": mean precision@k of that class's queries, "n": count}}``."""
    q = np.asarray(query_labels)
    table: dict[str, dict[str, float]] = {}
    for code, name in enumerate(classes):
        mask = q == code
        if not mask.any():
            continue
        row: dict[str, float] = {f"P@{k}": float(precision_at(rel[mask], k).mean()) for k in ks}
        row["n"] = int(mask.sum())
        table[name] = row
    return table


def retrieval_metrics(query_labels: np.ndarray, result_labels: np.ndarray,
                      ks: Sequence[int] = (1, 5, 10), map_depth: int = 1000,
                      knn_k: int = 5) -> dict[str, float]:
    """precision@k for each ``k``, ``mAP@map_depth`` and ``knn{knn_k}_accuracy`` of a ranking."""
    rel = relevance(query_labels, result_labels)
    out = {f"P@{k}": float(precision_at(rel, k).mean()) if len(rel) else 0.0 for k in ks}
    out[f"mAP@{map_depth}"] = mean_average_precision(rel, map_depth)
    out[f"knn{knn_k}_accuracy"] = knn_accuracy(query_labels, result_labels, knn_k)
    return out


def exact_topk(db_vectors: np.ndarray, queries: np.ndarray, k: int,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-``k``: ``(rows, scores)``, each (n_queries, k).

    ``rows`` index ``db_vectors`` (``PAD`` past its end); equal scores are ordered by row.
    For cosine, pass L2-normalized vectors.
    """
    db = np.ascontiguousarray(db_vectors, np.float32)
    qs = np.ascontiguousarray(queries, np.float32)
    n = db.shape[0]
    kk = min(k, n)
    rows = np.full((qs.shape[0], k), PAD, np.int64)
    scores = np.full((qs.shape[0], k), -np.inf, np.float32)
    if kk == 0:
        return rows, scores
    for s in range(0, qs.shape[0], chunk):
        sim = qs[s:s + chunk] @ db.T
        if kk < n:
            part = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(n), (sim.shape[0], n))
        part_scores = np.take_along_axis(sim, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        rows[s:s + chunk, :kk] = np.take_along_axis(part, order, axis=1)
        scores[s:s + chunk, :kk] = np.take_along_axis(part_scores, order, axis=1)
    return rows, scores
