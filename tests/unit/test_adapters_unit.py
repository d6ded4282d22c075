"""Pure parts of derived models: keys, specs, transforms, heads, losses, codes, recipes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from imgsim_lab.adapters import transforms as T
from imgsim_lab.adapters.evaluate import itq, map_all, ranking_metrics, sign_codes
from imgsim_lab.adapters.heads import Head, make_loss
from imgsim_lab.adapters.spec import (
    BaseRef,
    DerivedModelError,
    DerivedSpec,
    content_version,
    derived_key,
    split_derived_key,
)
from imgsim_lab.experiments.derived import check_recipes

REPO = Path(__file__).resolve().parents[2]


def test_keys():
    assert derived_key("efficientnet_lite0", "mlp") == "efficientnet_lite0+mlp"
    assert split_derived_key("a+b+c") == ("a+b", "c")
    for bad in ("", "x y", "a:b", "n" * 33, "a+b"):
        with pytest.raises(DerivedModelError):
            derived_key("base", bad)
    with pytest.raises(DerivedModelError, match="must start with its first base"):
        DerivedSpec(key="a+x", kind="center", bases=[BaseRef("b", 4, "v")], dim=4)


def test_spec_round_trip_and_version_hash():
    spec = DerivedSpec(key="a+x", kind="whiten", bases=[BaseRef("a", 4, "v1")], dim=2, options={"dim": 2})
    assert DerivedSpec.from_json(spec.to_json()) == spec
    t = {"mean": np.zeros(4, np.float32), "proj": np.eye(4, 2, dtype=np.float32)}
    v1 = content_version("whiten", t, {"dim": 2}, spec.bases)
    assert v1.startswith("whiten-") and v1 == content_version("whiten", dict(t), {"dim": 2}, spec.bases)
    t2 = {**t, "mean": np.full(4, 1e-3, np.float32)}
    assert content_version("whiten", t2, {"dim": 2}, spec.bases) != v1
    assert content_version("whiten", t, {"dim": 2}, [BaseRef("a", 4, "v2")]) != v1
    with pytest.raises(DerivedModelError, match="malformed"):
        DerivedSpec.from_json(b"{not json")


def test_whitening_decorrelates_and_shrinkage_interpolates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6)) + 3.0
    t = T.fit_whiten(x, dim=4, shrinkage=0.0)
    z = (x - t["mean"]) @ t["proj"]
    np.testing.assert_allclose(np.cov(z.T), np.eye(4), atol=1e-2)
    t1 = T.fit_whiten(x, dim=4, shrinkage=1.0)  # plain PCA: equal scaling of all axes
    z1 = (x - t1["mean"]) @ t1["proj"]
    var = np.var(z1, axis=0)
    assert var[0] > var[-1] * 2
    for bad in ({"dim": 7}, {"shrinkage": 1.5}):
        with pytest.raises(DerivedModelError):
            T.fit_whiten(x, **{"dim": 4, **bad})
    out = T.apply("whiten", t, [x.astype(np.float32)])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_concat_checks_its_bases():
    a, b = np.ones((3, 2), np.float32), np.ones((3, 5), np.float32)
    t = T.fit_concat([2, 5], [2.0, 1.0])
    assert T.apply("concat", t, [a, b]).shape == (3, 7)
    with pytest.raises(DerivedModelError, match="different numbers"):
        T.apply("concat", t, [a, b[:2]])
    with pytest.raises(DerivedModelError, match="positive weight"):
        T.fit_concat([2, 5], [1.0, 0.0])


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_exported_head_matches_torch(kind):
    torch.manual_seed(0)
    head = Head(kind, 12, 5, hidden=16)
    head.train()
    head(torch.randn(64, 12))  # moves the batch-norm statistics off their defaults
    head.eval()
    x = torch.randn(10, 12)
    with torch.no_grad():
        want = head(x).numpy()
    np.testing.assert_allclose(T.apply("adapter", head.export(), [x.numpy()]), want, atol=1e-5)


@pytest.mark.parametrize("loss", ["cos_softmax", "proxy_anchor", "supcon"])
def test_losses_prefer_class_clusters(loss):
    torch.manual_seed(0)
    y = torch.arange(30) % 3
    fn = make_loss(loss, 3, 4)
    good = torch.nn.functional.normalize(torch.eye(4)[y] + 0.01 * torch.randn(30, 4), dim=1)
    bad = torch.nn.functional.normalize(torch.randn(30, 4), dim=1)
    if loss != "supcon":  # align the proxies with the clusters
        fn.proxies.data = torch.eye(4)[:3].clone()
    with torch.no_grad():
        assert float(fn(good, y)) < float(fn(bad, y))


def test_map_all_and_codes():
    rng = np.random.default_rng(1)
    db = rng.normal(size=(300, 16)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    q, qy = db[:40] + 0.05, y[:40]
    at_depth = ranking_metrics(db, y, q, qy, map_depth=300, full_map=False)["mAP@300"]
    assert abs(map_all(db, y, q, qy) - at_depth) < 1e-9
    perfect = np.eye(3, dtype=np.float32)[y]
    assert map_all(perfect, y, perfect[:40], qy) == pytest.approx(1.0)
    mean, pca, rot = itq(db, 8)
    np.testing.assert_allclose(rot @ rot.T, np.eye(8), atol=1e-4)
    codes = sign_codes(db, mean, pca, rot)
    assert set(np.unique(codes)) == {-1.0, 1.0} and codes.shape == (300, 8)


def test_experiment_recipes_are_consistent():
    import yaml

    exp = yaml.safe_load((REPO / "experiments" / "cifar10_adapters.yaml").read_text())
    models = [m for g in exp["grid"] for m in g["model"]]
    check_recipes(models, exp["params"]["derived"])
    with pytest.raises(DerivedModelError, match="no recipe"):
        check_recipes(["a+b"], {})
    with pytest.raises(DerivedModelError, match="named after its first base"):
        check_recipes(["a+b"], {"a+b": {"kind": "concat", "bases": ["c", "a"]}})
