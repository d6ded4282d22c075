"""Derived models (adapters, centring, whitening, concatenation) on real stores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from imagegen import image_bytes

from imgsim_lab import adapters
from imgsim_lab.adapters.training import TrainConfig
from imgsim_lab.check import check_store
from imgsim_lab.store import NewImage, open_store

pytestmark = pytest.mark.integration

CLASSES = ("a", "b", "c")


def _synthetic(n: int, split: str, seed: int, dim: int = 32) -> list[tuple[str, str, np.ndarray]]:
    """Labelled vectors: class signal in 4 dims buried under 28 dims of stronger noise."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(0, 1, (len(CLASSES), 4))
    out = []
    for i in range(n):
        c = i % len(CLASSES)
        v = np.concatenate([centers[c] + rng.normal(0, 0.35, 4), rng.normal(0, 2.5, dim - 4)])
        sha = hashlib.sha256(f"{split}-{seed}-{i}".encode()).hexdigest()
        src = f"synth/{split}/{CLASSES[c]}/{i:04d}.png"
        out.append((sha, src, (v / np.linalg.norm(v)).astype(np.float32)))
    return out


def _fill(store, rows, model: str = "synth", version: str = "v1") -> list[int]:
    store.register_model(model, rows[0][2].shape[0], version)
    res = store.add_images([NewImage(sha, src, 32, 32, src.split("/")[2], {model: v})
                            for sha, src, v in rows])
    return [r.id for r in res]


@pytest.fixture(params=["rocksdb", "redis"])
def store(request, tmp_path: Path, namespace: str):
    url = f"rocksdb:{tmp_path / 'kv'}" if request.param == "rocksdb" else request.getfixturevalue("redis_url")
    with open_store(url, namespace) as s:
        yield s
        if request.param == "redis":
            s.flush()


def _map(store, key: str, q_ids, db_ids) -> float:
    from imgsim_lab.adapters.training import retrieval_map

    _, db = store.get_embeddings(key, db_ids)
    _, q = store.get_embeddings(key, q_ids)
    lab = {r.id: r.label for r in store.get_records(list(db_ids) + list(q_ids))}
    codes = {c: i for i, c in enumerate(CLASSES)}
    return retrieval_map(db, np.array([codes[lab[i]] for i in db_ids]), q,
                         np.array([codes[lab[i]] for i in q_ids]), depth=50)


FAST = dict(epochs=10, batch_size=64, patience=3, hidden=64, dim=16, lr=1e-2, threads=1)


@pytest.mark.parametrize("loss", ["cos_softmax", "proxy_anchor", "supcon"])
def test_adapter_trains_on_train_split_and_beats_frozen(store, loss, tmp_path):
    train = _synthetic(600, "train", 1)
    test = _synthetic(90, "test", 2)
    db_ids, q_ids = _fill(store, train), _fill(store, test)
    spec = adapters.train_adapter(store, "ad", "synth", TrainConfig(kind="mlp", loss=loss, **FAST),
                                  out_dir=tmp_path / "out", progress=False)
    assert spec.key == "synth+ad" and spec.version.startswith("adapter-") and spec.dim == 16
    info = store.model_info()["synth+ad"]
    assert info.count == len(train) + len(test) and info.version == spec.version
    # fitted on the train split only, and it says so
    assert spec.trained_on["split"] == "train" and spec.trained_on["records"] == len(train)
    assert adapters.trained_hashes(store, "synth+ad") == {sha for sha, _, _ in train}
    assert _map(store, "synth+ad", q_ids, db_ids) > _map(store, "synth", q_ids, db_ids) + 0.05
    # stored vectors = the saved tensors applied to the stored base vectors
    d = adapters.load_derived(store, "synth+ad")
    _, base = store.get_embeddings("synth", q_ids)
    _, got = store.get_embeddings("synth+ad", q_ids)
    np.testing.assert_allclose(d.apply([base]), got, atol=1e-5)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["synth__ad.json", "synth__ad.safetensors", "synth__ad_loss.png"]
    assert json.loads((tmp_path / "out" / "synth__ad.json").read_text())["version"] == spec.version
    assert check_store(store).ok


def test_early_stopping_on_validation_split():
    """Labels without signal: validation mAP stops improving at once, training stops early."""
    from imgsim_lab.adapters.training import retrieval_map, stratified_split, train_head
    from imgsim_lab.adapters.transforms import apply

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 32)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    cfg = TrainConfig(kind="linear", epochs=60, patience=2, batch_size=32, dim=8, threads=1)
    res = train_head(x, y, cfg, progress=False)
    assert res.n_val == 30 and res.n_fit == 270
    assert res.stopped_early and len(res.history) < 20
    assert len(res.history) == res.best_epoch + cfg.patience
    # the kept weights are the best epoch's
    fit, val = stratified_split(y, cfg.val_fraction, cfg.seed)
    emb = apply("adapter", res.tensors, [x])
    assert abs(retrieval_map(emb[fit], y[fit], emb[val], y[val]) - res.best_val_map) < 1e-6


def test_transforms_center_whiten_concat(store):
    rows = _synthetic(300, "train", 4)
    ids = _fill(store, rows)
    rng = np.random.default_rng(0)
    store.register_model("other", 8, "v1")
    other = rng.normal(size=(len(ids), 8)).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    recs = store.get_records(ids)
    store.add_images([NewImage(r.sha256, r.source, 32, 32, r.label, {"other": v})
                      for r, v in zip(recs, other, strict=True)])

    adapters.fit_transform(store, "c", "center", ["synth"], progress=False)
    adapters.fit_transform(store, "w", "whiten", ["synth"], dim=12, shrinkage=0.1, progress=False)
    adapters.fit_transform(store, "cat", "concat", ["synth", "other"], weights=[1.0, 0.5], progress=False)
    models = store.model_info()
    assert (models["synth+c"].dim, models["synth+w"].dim, models["synth+cat"].dim) == (32, 12, 40)
    assert all(models[k].count == len(ids) for k in ("synth+c", "synth+w", "synth+cat"))
    _, base = store.get_embeddings("synth", ids)
    _, cen = store.get_embeddings("synth+c", ids)
    expect = base - base.mean(axis=0)
    np.testing.assert_allclose(cen, expect / np.linalg.norm(expect, axis=1, keepdims=True), atol=1e-5)
    _, cat = store.get_embeddings("synth+cat", ids)
    want = np.concatenate([base, 0.5 * other], axis=1)
    np.testing.assert_allclose(cat, want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    # a derived model on a derived model: derive order follows creation order
    adapters.train_adapter(store, "ad", "synth+w", TrainConfig(kind="linear", **FAST), progress=False)
    assert store.model_info()["synth+w+ad"].count == len(ids)
    assert check_store(store).ok


def test_new_records_get_derived_vectors_and_delete_is_clean(store):
    ids = _fill(store, _synthetic(150, "train", 5))
    adapters.fit_transform(store, "c", "center", ["synth"], progress=False)
    adapters.train_adapter(store, "ad", "synth+c", TrainConfig(kind="linear", **FAST), progress=False)
    new = _fill(store, _synthetic(9, "test", 6))
    assert adapters.derive_new(store, new) == {"synth+c": 9, "synth+c+ad": 9}
    assert store.has_embeddings("synth+c+ad", new).all()
    assert check_store(store).ok
    with pytest.raises(adapters.DerivedModelError, match="built on 'synth\\+c'"):
        adapters.delete_derived(store, "synth+c")
    with pytest.raises(adapters.DerivedModelError, match="exists already"):
        adapters.fit_transform(store, "c", "center", ["synth"], progress=False)
    removed = adapters.delete_derived(store, "synth+c", cascade=True)
    assert removed == {"synth+c+ad": len(ids) + 9, "synth+c": len(ids) + 9}
    assert set(store.model_info()) == {"synth"} and adapters.list_derived(store) == []
    if store.backend != "rocksdb":  # the model-name set lists no deleted model (it did: stale names)
        assert set(store._t.command("SMEMBERS", store.keys.models)) == {b"synth"}
    assert not store.has_embeddings("synth+c", ids).any()
    assert not [k for k in store.scan_keys() if k.startswith(f"{store.namespace}:derived:")]
    rep = check_store(store)
    assert rep.ok and set(rep.models) == {"synth"}
    # retraining under the same name starts clean, with a new version
    spec = adapters.train_adapter(store, "ad", "synth", TrainConfig(kind="linear", seed=1, **FAST),
                                  progress=False)
    assert store.model_info()["synth+ad"].count == len(ids) + 9 and spec.version.startswith("adapter-")


def test_stale_base_version_is_refused(store):
    ids = _fill(store, _synthetic(60, "train", 7))
    adapters.fit_transform(store, "c", "center", ["synth"], progress=False)
    # the base model's recorded version changes (re-embedded with new weights/preprocessing)
    k = store.keys
    if store.backend == "rocksdb":
        store.raw_set(k.model("synth"), json.dumps({"dim": 32, "version": "v2", "count": len(ids)}))
    else:
        store._t.command("HSET", k.model("synth"), "version", "v2")  # as another writer would
    with pytest.raises(adapters.StaleBaseError, match="version 'v1'.*now holds version 'v2'"):
        adapters.derive(store, "synth+c")
    from imgsim_lab.adapters.model import DerivedModel

    with pytest.raises(adapters.StaleBaseError, match="retrain or refit"):
        DerivedModel(store, "synth+c")
    assert adapters.derive_new(store, ids) == {}  # logged, never written with the wrong base


def test_tampered_tensors_are_refused(store):
    _fill(store, _synthetic(60, "train", 8))
    spec = adapters.fit_transform(store, "c", "center", ["synth"], progress=False)
    from safetensors.numpy import save

    key = f"{store.namespace}:derived:{spec.key}:tensors"
    store.raw_set(key, save({"mean": np.zeros(32, np.float32)}))
    adapters.registry._CACHE.clear()
    with pytest.raises(adapters.DerivedModelError, match="hash to"):
        adapters.load_derived(store, spec.key)
    store.raw_set(key, b"\x80\x04not safetensors")
    with pytest.raises(adapters.DerivedModelError, match="corrupt"):
        adapters.load_derived(store, spec.key)


def test_queries_seen_in_training_are_refused(store):
    train, test = _synthetic(90, "train", 9), _synthetic(30, "test", 10)
    _fill(store, train)
    _fill(store, test)
    adapters.fit_transform(store, "w", "whiten", ["synth"], dim=8, progress=False)
    adapters.train_adapter(store, "ad", "synth+w", TrainConfig(kind="linear", **FAST), progress=False)
    adapters.check_queries_unseen(store, "synth+w+ad", [s for s, _, _ in test])
    with pytest.raises(adapters.DerivedModelError, match="trained on 2 of these"):
        adapters.check_queries_unseen(store, "synth+w+ad",
                                      [s for s, _, _ in test] + [train[0][0], train[5][0]])


def test_train_on_refuses_test_only_store(store):
    _fill(store, _synthetic(30, "test", 11))
    with pytest.raises(adapters.DerivedModelError, match="no train split"):
        adapters.train_adapter(store, "ad", "synth", TrainConfig(**FAST), progress=False)
    spec = adapters.train_adapter(store, "ad", "synth", TrainConfig(kind="linear", **FAST),
                                  train_on="all", progress=False)
    assert spec.trained_on["split"] == "all"


def test_ingest_search_and_cli_with_derived_pixels_model(tmp_path, namespace, capsys):
    """Real images: ingest with `pixels`, fit + train via the CLI, ingest more, search by a new image."""
    from imgsim_lab.cli import main
    from imgsim_lab.datasets import folder_items
    from imgsim_lab.ingest import ingest
    from imgsim_lab.models import get_model
    from imgsim_lab.search import Searcher

    colours = ("red", "green", "blue")
    root = tmp_path / "imgs"
    for split, rng_ in (("train", range(0, 90)), ("test", range(90, 120))):
        for i in rng_:
            d = root / split / colours[i % 3]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:03d}.png").write_bytes(image_bytes(i))
    url = f"rocksdb:{tmp_path / 'kv'}"
    pixels = get_model("pixels")
    with open_store(url, namespace) as s:
        ingest(folder_items(root / "train", label_from_parent=True), s, [pixels], progress=False)
    kv = ["--kv", url, "--namespace", namespace]
    assert main(["adapter", "fit", "c", "--kind", "center", "--base", "pixels", *kv,
                 "--out", str(tmp_path / "out")]) == 0
    out_json = tmp_path / "ad.json"
    assert main(["adapter", "train", "ad", "--base", "pixels+c", "--kind", "linear", "--dim", "8",
                 "--epochs", "3", "--batch-size", "32", "--json", str(out_json), *kv,
                 "--out", str(tmp_path / "out")]) == 0
    rep = json.loads(out_json.read_text())
    assert rep["key"] == "pixels+c+ad" and rep["trained_on"]["records"] == 90 and rep["history"]
    assert (tmp_path / "out" / "pixels__c__ad_loss.png").stat().st_size > 1000
    with open_store(url, namespace) as s:
        summary = ingest(folder_items(root / "test", label_from_parent=True), s, [pixels], progress=False)
        assert summary.added == 30
        assert s.model_info()["pixels+c+ad"].count == 120  # derived at ingest, automatically
        assert check_store(s).ok
        searcher = Searcher(s, "pixels+c+ad")
        res = searcher.search_bytes(image_bytes(500), k=5)
        assert len(res.matches) == 5 and searcher.model.key == "pixels+c+ad"
        # a new image embedded through the derived model = the derived transform of its base vector
        stored = s.ids_for_hashes([hashlib.sha256(image_bytes(3)).hexdigest()])[0]
        _, want = s.get_embeddings("pixels+c+ad", [stored])
        vec, _ = searcher.embed(image_bytes(3))
        np.testing.assert_allclose(vec, want[0], atol=1e-5)
    from imgsim_lab.app.session import SearchSession

    session = SearchSession(url, namespace)  # the app: a read-only view of the store
    try:
        assert "pixels+c+ad" in session.model_keys()
        session.use_model("pixels+c+ad")
        outcome = session.handle_upload("new.png", image_bytes(501), k=3)
        assert outcome.status == "searched" and len(outcome.result.matches) == 3
    finally:
        session.close()
    capsys.readouterr()
    assert main(["adapter", "list", *kv]) == 0
    assert "pixels+c+ad: adapter dim 8" in capsys.readouterr().out
    assert main(["adapter", "delete", "pixels+c", *kv]) == 2  # has a dependent
    assert main(["adapter", "delete", "pixels+c", "--cascade", *kv]) == 0
    capsys.readouterr()
    assert main(["info", "--json", *kv]) == 0
    assert set(json.loads(capsys.readouterr().out)["models"]) == {"pixels"}


def _image_folder(root: Path, train: range, test: range) -> Path:
    colours = ("red", "green", "blue")
    for split, ids in (("train", train), ("test", test)):
        for i in ids:
            d = root / split / colours[i % 3]
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i:03d}.png").write_bytes(image_bytes(i))
    return root


def test_benchmark_evaluates_derived_models_and_refuses_seen_queries(tmp_path):
    from imgsim_lab.experiments import run_benchmark
    from imgsim_lab.experiments.grid import summary_rows

    root = _image_folder(tmp_path / "imgs", range(0, 60), range(60, 75))
    recipes = {"pixels+c": {"kind": "center"},
               "pixels+c+lin": {"kind": "adapter", "head": "linear", "dim": 8, "epochs": 3, "batch_size": 16}}
    params = {"dataset": str(root), "db_size": None, "query_size": None, "progress": False,
              "models": ["pixels", "pixels+c+lin"], "derived": recipes, "full_map": True,
              "output_dir": str(tmp_path / "run"), "kv_url": f"rocksdb:{tmp_path / 'kv'}",
              "latency_queries": 5, "example_queries": 2}
    res = run_benchmark(params)
    m = res["models"]["pixels+c+lin"]
    assert m["key"] == "pixels+c+lin" and m["db_count"] == 60 and m["query_count"] == 15
    assert m["derived"]["trained_on"]["split"] == "train" and m["derived"]["trained_on"]["records"] == 60
    assert m["derived"]["queries_checked_unseen"] and m["derived"]["train_seconds"] > 0
    assert 0 < m["quality"]["mAP@all"] <= 1 and "mAP@all" in res["models"]["pixels"]["quality"]
    row = [r for r in summary_rows([("c", "done", res, "")]) if r["key"] == "pixels+c+lin"][0]
    assert row["train_seconds"] == m["derived"]["train_seconds"]
    # a rerun reuses the stored derived models (same recipe, same version)
    again = run_benchmark(params)
    assert again["models"]["pixels+c+lin"]["version"] == m["version"]
    # queries that the adapter was trained on are refused
    leak = _image_folder(tmp_path / "leak", range(0, 60), range(0, 15))
    with pytest.raises(adapters.DerivedModelError, match="trained on 15 of these 15 queries"):
        run_benchmark({**params, "dataset": str(leak), "kv_url": f"rocksdb:{tmp_path / 'kv2'}",
                       "output_dir": str(tmp_path / "run2")})


def test_flip_averaging_wrapper_is_mirror_invariant():
    import io

    from PIL import Image

    from imgsim_lab.adapters.model import FlipAveraged
    from imgsim_lab.models import available_models, get_model

    base = get_model("pixels")
    flip = FlipAveraged(base)
    assert flip.key == "pixels_flip" and flip.version == f"{base.version}-flipavg" and flip.dim == base.dim
    img = Image.open(io.BytesIO(image_bytes(7))).convert("RGB")
    mirror = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    a, b = flip.embed_images([img, mirror])
    np.testing.assert_allclose(a, b, atol=1e-6)
    plain = base.embed_images([img])[0]
    assert float(plain @ a) < 0.999  # it is not the plain embedding
    assert {"efficientnet_lite0_flip", "efficientnet_lite2_flip"} <= set(available_models())


def test_benchmark_with_query_expansion_ranks_the_expanded_queries(tmp_path):
    from imgsim_lab.experiments import run_benchmark

    root = _image_folder(tmp_path / "imgs", range(0, 60), range(60, 75))
    params = {"dataset": str(root), "db_size": None, "query_size": None, "progress": False,
              "models": ["pixels"], "output_dir": str(tmp_path / "run"),
              "kv_url": f"rocksdb:{tmp_path / 'kv'}", "latency_queries": 5, "example_queries": 2}
    plain = run_benchmark(params)["models"]["pixels"]
    qe = run_benchmark({**params, "expand": 3, "output_dir": str(tmp_path / "run_qe")})["models"]["pixels"]
    assert plain["expansion"] is None and qe["expansion"] == {"n": 3, "alpha": 3.0}
    top = [[h["score"] for h in m["examples"][0]["hits"]] for m in (plain, qe)]
    assert top[0] != top[1]  # cosines to the expanded query, not to the query
    assert qe["index"]["recall@10"] == 1.0  # the index searched the same expanded queries
    with pytest.raises(ValueError, match="expansion n must be >= 0"):
        run_benchmark({**params, "expand": -1, "output_dir": str(tmp_path / "run_bad")})
