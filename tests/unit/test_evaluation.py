"""Retrieval metrics: hand-computed cases and properties on random data."""

from __future__ import annotations

import numpy as np
import pytest

from imgsim_lab import evaluation as ev

PAD = ev.PAD


def test_encode_labels_maps_none_and_unknown_to_pad() -> None:
    codes, classes = ev.encode_labels(["cat", "dog", None, "cat"])
    assert classes == ["cat", "dog"]
    assert codes.tolist() == [0, 1, PAD, 0]
    codes, _ = ev.encode_labels(["cat", "bird"], classes=["cat", "dog"])
    assert codes.tolist() == [0, PAD]


def test_precision_hand_computed_and_padding_counts_as_miss() -> None:
    q = np.array([0, 1])
    res = np.array([[0, 1, 0, PAD, PAD], [1, 1, 1, 1, 1]])
    rel = ev.relevance(q, res)
    assert ev.precision_at(rel, 1).tolist() == [1.0, 1.0]
    assert ev.precision_at(rel, 5).tolist() == [0.4, 1.0]
    with pytest.raises(ValueError):
        ev.precision_at(rel, 0)


def test_pad_query_label_is_never_relevant() -> None:
    rel = ev.relevance(np.array([PAD]), np.array([[PAD, PAD]]))
    assert not rel.any()


def test_average_precision_hand_computed() -> None:
    # relevant at ranks 1, 3 and 6 within the top 6: AP = (1/1 + 2/3 + 3/6) / 3
    rel = np.array([[1, 0, 1, 0, 0, 1]], bool)
    assert ev.average_precision_at(rel, 6)[0] == pytest.approx((1 + 2 / 3 + 3 / 6) / 3)
    # only ranks within the depth count, normalized by the relevant retrieved there
    assert ev.average_precision_at(rel, 3)[0] == pytest.approx((1 + 2 / 3) / 2)
    # no relevant item retrieved: AP 0 (and the query still counts in the mean)
    rel2 = np.vstack([rel, np.zeros((1, 6), bool)])
    assert ev.mean_average_precision(rel2, 6) == pytest.approx((1 + 2 / 3 + 3 / 6) / 3 / 2)


def test_average_precision_of_perfect_and_reversed_rankings() -> None:
    rel = np.array([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], bool)
    ap = ev.average_precision_at(rel, 6)
    assert ap[0] == pytest.approx(1.0)
    assert ap[1] == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 3)


def test_map_equals_sklearn_style_full_ap_when_depth_covers_database() -> None:
    rng = np.random.default_rng(1)
    rel = rng.random((20, 50)) < 0.3
    rel[:, 0] |= True  # every query has a relevant item
    full = []
    for row in rel:
        pos = np.flatnonzero(row) + 1
        full.append(np.mean(np.arange(1, len(pos) + 1) / pos))
    assert ev.mean_average_precision(rel, 1000) == pytest.approx(float(np.mean(full)))


def test_knn_majority_and_tie_broken_by_nearest() -> None:
    res = np.array([
        [1, 2, 2, 3, 1],        # 1 and 2 tie (2 each): 1 is nearer
        [2, 1, 1, 2, 3],        # tie again, 2 is nearer
        [3, 1, 1, 1, 2],        # majority 1
        [PAD, PAD, PAD, PAD, PAD],
        [4, PAD, PAD, PAD, PAD],
    ])
    assert ev.knn_predict(res, 5).tolist() == [1, 2, 1, PAD, 4]
    assert ev.knn_accuracy(np.array([1, 1, 1, 0, 4]), res, 5) == pytest.approx(3 / 5)


def test_recall_against_exact() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, PAD, PAD]])
    approx = np.array([[4, 3, 9, 8], [6, 7, 5, PAD]])
    # first: {3, 4} of 4 -> 0.5; second: truth {5, 6} (k=4 cut keeps both) -> 1.0
    assert ev.recall_against(approx, exact, k=4) == pytest.approx(0.75)
    assert ev.recall_against(exact, exact, k=4) == 1.0
    with pytest.raises(ValueError):
        ev.recall_against(approx[:1], exact, k=4)


def test_latency_percentiles_in_ms() -> None:
    lat = ev.latency_percentiles([0.001 * i for i in range(1, 101)])
    assert lat["p50_ms"] == pytest.approx(50.5)
    assert lat["p95_ms"] == pytest.approx(95.05)
    assert ev.latency_percentiles([])["p50_ms"] == 0.0


def test_per_class_precision_table() -> None:
    q = np.array([0, 0, 1])
    res = np.array([[0, 1], [1, 1], [1, 1]])
    table = ev.per_class_precision(q, ev.relevance(q, res), ["a", "b", "c"], ks=(1, 2))
    assert table == {"a": {"P@1": 0.5, "P@2": 0.25, "n": 2}, "b": {"P@1": 1.0, "P@2": 1.0, "n": 1}}


def test_exact_topk_matches_full_sort_on_random_data() -> None:
    rng = np.random.default_rng(0)
    db = rng.standard_normal((300, 16)).astype(np.float32)
    qs = rng.standard_normal((40, 16)).astype(np.float32)
    rows, scores = ev.exact_topk(db, qs, 25, chunk=7)
    sim = qs @ db.T
    expect = np.argsort(-sim, axis=1, kind="stable")[:, :25]
    assert np.array_equal(rows, expect)
    assert np.allclose(scores, np.take_along_axis(sim, expect, axis=1), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_exact_topk_pads_when_database_is_small() -> None:
    db = np.eye(3, dtype=np.float32)
    rows, scores = ev.exact_topk(db, np.array([[0, 1, 0]], np.float32), 5)
    assert rows[0, 0] == 1 and rows[0, 3:].tolist() == [PAD, PAD]
    assert np.isneginf(scores[0, 3:]).all()
    rows, scores = ev.exact_topk(np.zeros((0, 3), np.float32), np.ones((2, 3), np.float32), 4)
    assert (rows == PAD).all() and rows.shape == (2, 4)


def test_retrieval_metrics_random_labels_near_chance_and_perfect_is_one() -> None:
    rng = np.random.default_rng(3)
    n_classes, n_db, n_q = 10, 2000, 300
    db_labels = rng.integers(0, n_classes, n_db)
    q_labels = rng.integers(0, n_classes, n_q)
    ranking = np.stack([rng.permutation(n_db) for _ in range(n_q)])
    m = ev.retrieval_metrics(q_labels, db_labels[ranking], map_depth=1000)
    assert abs(m["P@10"] - 0.1) < 0.03 and abs(m["mAP@1000"] - 0.1) < 0.05
    perfect = np.stack([np.argsort(db_labels != c, kind="stable") for c in q_labels])
    m2 = ev.retrieval_metrics(q_labels, db_labels[perfect], map_depth=1000)
    assert m2["P@1"] == m2["P@10"] == m2["mAP@1000"] == m2["knn5_accuracy"] == 1.0


def test_relevance_shape_is_checked() -> None:
    with pytest.raises(ValueError):
        ev.relevance(np.array([0, 1]), np.array([[0, 1]]))
