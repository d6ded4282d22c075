"""αQE and DBA (imgsim_lab.expansion) on random clustered vectors."""

from __future__ import annotations

import numpy as np
import pytest

from imgsim_lab.adapters.evaluate import expansion_metrics, ranking_metrics
from imgsim_lab.expansion import ExpansionConfig, augment_database, expand, expand_against


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clusters(n: int, classes: int = 8, dim: int = 32, noise: float = 1.3, seed: int = 0):
    """``n`` noisy draws around ``classes`` fixed centres (the same for every ``seed``)."""
    centres = np.random.default_rng(1234).standard_normal((classes, dim))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    return unit(centres[y] + noise * rng.standard_normal((n, dim))), y


def test_expand_weights_neighbours_by_cosine_power_and_ignores_negative_or_missing():
    q = unit(np.array([[1.0, 0.0, 0.0]]))
    nb = unit(np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]]))
    sims = np.array([[0.5, -0.2, -np.inf]], np.float32)
    out = expand(q, nb, sims, alpha=2.0)
    want = unit(np.array([[1.0, 0.25, 0.0]]))  # 1 * q + 0.5**2 * e2; the others weigh 0
    np.testing.assert_allclose(out, want, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_expand_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        expand(np.zeros((2, 4), np.float32), np.zeros((2, 3, 5), np.float32), np.zeros((2, 3)), 3.0)


@pytest.mark.parametrize("bad", [dict(n=-1), dict(alpha=-1.0), dict(alpha=float("nan"))])
def test_config_refuses_bad_settings_by_name(bad):
    with pytest.raises(ValueError, match="expansion (n|alpha)"):
        ExpansionConfig(**bad)


def test_off_is_the_identity_up_to_normalization():
    x, _ = clusters(50)
    np.testing.assert_allclose(augment_database(x, 0), x, atol=1e-6)
    np.testing.assert_allclose(expand_against(x[:5], x, 0), x[:5], atol=1e-6)


def test_dba_never_uses_the_row_itself():
    # two far-apart pairs: each row's only neighbour is its partner, so with one neighbour
    # and alpha 0 every row becomes the mean of itself and its partner, whatever its own weight
    x = unit(np.array([[1.0, 0.1, 0, 0], [1.0, -0.1, 0, 0], [0, 0, 1.0, 0.1], [0, 0, 1.0, -0.1]]))
    out = augment_database(x, 1, alpha=0.0, chunk=3)  # chunk boundary inside the data
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)
    np.testing.assert_allclose(out[2], out[3], atol=1e-6)
    np.testing.assert_allclose(out[0], unit(np.array([1.0, 0, 0, 0])), atol=1e-6)


def test_expansion_raises_map_on_noisy_clusters():
    db, db_y = clusters(2000, seed=1)
    q, q_y = clusters(300, seed=2)
    plain = ranking_metrics(db, db_y, q, q_y, full_map=False)
    qe = expansion_metrics(db, db_y, q, q_y, ExpansionConfig(5, 3.0), full_map=False)
    both = expansion_metrics(db, db_y, q, q_y, ExpansionConfig(5, 3.0), ExpansionConfig(5, 3.0),
                             full_map=False)
    assert qe["mAP@1000"] > plain["mAP@1000"] + 0.01, (plain, qe)
    assert both["mAP@1000"] > qe["mAP@1000"], (qe, both)
