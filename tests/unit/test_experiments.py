"""Experiment grids: parsing, expansion, overrides, skipping finished cells, summaries."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from imgsim_lab.datasets import ImageItem
from imgsim_lab.experiments import benchmark as bm
from imgsim_lab.experiments import grid as g
from imgsim_lab.experiments.runner import cell_parameters, run_experiment

REPO = Path(__file__).resolve().parents[2]


def _exp(grid, params=None, name="t") -> g.Experiment:
    return g.parse_experiment({"name": name, "params": params or {"db_size": 100}, "grid": grid})


def test_dict_grid_is_a_product_with_readable_names() -> None:
    cells = _exp({"index_mode": ["exact", "budget"], "input_size": [96, 128]}).cells()
    assert [c.name for c in cells] == [
        "index_mode-exact__input_size-96", "index_mode-exact__input_size-128",
        "index_mode-budget__input_size-96", "index_mode-budget__input_size-128"]
    assert cells[3].params == {"db_size": 100, "index_mode": "budget", "input_size": 128}
    assert cells[3].varying == {"index_mode": "budget", "input_size": 128}


def test_list_grid_is_a_union_and_model_key_sets_models() -> None:
    cells = _exp([{"model": ["a", "b"], "input_size": [160]}, {"model": ["pixels"]},
                  {"model": ["a"], "input_size": [160]}]).cells()  # the duplicate is dropped
    assert [c.name for c in cells] == ["model-a__input_size-160", "model-b__input_size-160", "model-pixels"]
    assert cells[0].params["models"] == ["a"] and "model" not in cells[0].params


def test_no_grid_gives_one_default_cell_and_scalars_become_lists() -> None:
    assert [c.name for c in _exp({}).cells()] == ["default"]
    assert [c.params["seed"] for c in _exp({"seed": 3}).cells()] == [3]


def test_cells_do_not_share_mutable_params() -> None:
    cells = _exp({"seed": [1, 2]}, params={"models": ["x"]}).cells()
    cells[0].params["models"].append("y")
    assert cells[1].params["models"] == ["x"]


def test_bad_experiment_files_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown experiment keys"):
        g.parse_experiment({"parmas": {}})
    with pytest.raises(ValueError, match="mappings"):
        g.parse_experiment({"grid": [["a"]]})
    with pytest.raises(ValueError, match="name"):
        g.parse_experiment({"name": "a/b"})
    f = tmp_path / "mine.yaml"
    f.write_text("params: {k: 5}\ngrid: {seed: [0, 1]}\n")
    exp = g.load_experiment(f)
    assert exp.name == "mine" and exp.notebook == g.DEFAULT_NOTEBOOK and len(exp.cells()) == 2


def test_overrides_fix_a_value_drop_its_axis_and_rename_the_run() -> None:
    exp = _exp({"db_size": [10, 20], "seed": [0, 1]})
    over = g.apply_overrides(exp, dict([g.parse_override("db_size=50000"), g.parse_override("k=5")]))
    assert over.name == "t__db_size-50000__k-5"
    assert [c.name for c in over.cells()] == ["seed-0", "seed-1"]
    assert all(c.params["db_size"] == 50000 and c.params["k"] == 5 for c in over.cells())
    assert g.apply_overrides(exp, {}) is exp
    assert g.parse_override("models=[pixels, color_hist]") == ("models", ["pixels", "color_hist"])
    assert g.parse_override("db_size=null") == ("db_size", None)
    with pytest.raises(ValueError):
        g.parse_override("nothing")


def test_shipped_experiment_files_parse_and_use_known_parameters() -> None:
    files = sorted((REPO / "experiments").glob("*.yaml"))
    assert {f.stem for f in files} >= {"demo", "cifar10_models", "cifar10_index"}
    for f in files:
        exp = g.load_experiment(f)
        assert exp.cells(), f
        for cell in exp.cells():
            bm.BenchmarkParams.from_dict(cell.params)  # raises on unknown keys
    models = {m for c in g.load_experiment(REPO / "experiments/cifar10_models.yaml").cells()
              for m in c.params["models"]}
    assert models == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
                      "pixels", "color_hist"}


def test_benchmark_params_reject_unknown_and_sizes_skip_baselines() -> None:
    with pytest.raises(ValueError, match="unknown benchmark parameters"):
        bm.BenchmarkParams.from_dict({"db_sise": 3})
    p = bm.BenchmarkParams.from_dict({"models": "pixels", "input_size": 128,
                                      "model_sizes": {"efficientnet_lite1": 176}})
    assert p.models == ["pixels"]
    assert p.size_for("pixels") is None and p.size_for("color_hist") is None
    assert p.size_for("efficientnet_lite0") == 128 and p.size_for("efficientnet_lite1") == 176


def test_params_from_namespace_takes_only_fields() -> None:
    from imgsim_lab.experiments.params import params_from_namespace

    p = params_from_namespace(bm.BenchmarkParams, {"db_size": 7, "other": 1, "k": 3})
    assert (p.db_size, p.k, p.query_size) == (7, 3, 1000)


def test_data_namespace_and_balanced_subset() -> None:
    from imgsim_lab.experiments.dataset import balanced_subset, data_namespace

    assert data_namespace("cifar10", 5000, 0) == "cifar10-train-5000-s0"
    assert data_namespace("/x/my images", None, 2, "test") == "my-images-test-all-s2"
    items = [ImageItem(f"s/{c}/{i}", c) for c in "abc" for i in range(10 if c != "c" else 2)]
    sub = balanced_subset(items, 9, seed=1)
    counts = {c: sum(it.label == c for it in sub) for c in "abc"}
    assert counts == {"a": 4, "b": 3, "c": 2} or counts == {"a": 3, "b": 4, "c": 2}
    assert sub == sorted(sub, key=lambda it: it.source)
    assert balanced_subset(items, 9, seed=1) == sub
    assert balanced_subset(items, None, 0) == items


def _folder(root: Path, n: int, salt: str = "") -> list[ImageItem]:
    from imgsim_lab.datasets import folder_items

    for i in range(n):
        (root / "train" / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / "train" / f"c{i % 2}" / f"{i}.png").write_bytes(f"{salt}{i}".encode())
    return folder_items(root / "train", label_from_parent=True)


def test_namespace_is_bound_to_the_datasets_identity(tmp_path: Path) -> None:
    """Same basename, different folders or changed files: different namespaces (issue 14.11)."""
    from imgsim_lab.experiments.dataset import data_namespace, dataset_identity

    a, b = tmp_path / "one" / "fashion", tmp_path / "two" / "fashion"
    ia, ib = dataset_identity(str(a), _folder(a, 6)), dataset_identity(str(b), _folder(b, 6))
    na, nb = (data_namespace(str(d), 6, 0, identity=i) for d, i in ((a, ia), (b, ib)))
    assert na.startswith("fashion-train-6-s0-") and nb.startswith("fashion-train-6-s0-") and na != nb
    assert data_namespace(str(a), 6, 0, identity=dataset_identity(str(a), _folder(a, 6))) == na  # stable
    (a / "train" / "c0" / "0.png").write_bytes(b"changed")
    from imgsim_lab.datasets import folder_items

    changed = dataset_identity(str(a), folder_items(a / "train", label_from_parent=True))
    assert data_namespace(str(a), 6, 0, identity=changed) != na
    assert (ia.files, ia.unique_files) == (6, 6)


def test_benchmark_refuses_a_store_that_mixes_datasets(tmp_path: Path) -> None:
    import hashlib

    import numpy as np

    from imgsim_lab.store import NewImage, open_store

    with open_store(f"rocksdb:{tmp_path / 'kv'}", "mixed") as store:
        store.register_model("m", 2, "v1")
        store.add_images([NewImage(hashlib.sha256(bytes([i])).hexdigest(), f"{i}", 4, 4,
                                   embeddings={"m": np.ones(2, np.float32)}) for i in range(7)])
        bm.check_database_size(store, "m", 7, 7, "mixed")
        with pytest.raises(bm.DatabaseMismatchError, match="holds 7 m vectors, but this run selected 5"):
            bm.check_database_size(store, "m", 5, 5, "mixed")


def test_relative_dataset_paths_mean_the_callers_cwd(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cell = g.Cell("c", {"dataset": "fashion", "data_dir": "d"})
    params = cell_parameters(cell, tmp_path / "runs" / "c", tmp_path / "runs")
    assert params["dataset"] == str(tmp_path / "fashion") and params["data_dir"] == str(tmp_path / "d")
    assert cell_parameters(g.Cell("c", {"dataset": "cifar10"}), tmp_path, tmp_path)["dataset"] == "cifar10"
    assert bm.dataset_title("cifar10") == "CIFAR-10"
    assert bm.dataset_title(str(tmp_path / "fashion")) == "fashion"


def test_example_query_indices_one_per_class_in_order() -> None:
    import numpy as np

    assert bm.example_query_indices(np.array([2, 2, 0, 1, 0]), 5) == [2, 3, 0]
    assert bm.example_query_indices(np.array([2, 2, 0, 1, 0]), 2) == [2, 3]


def _metrics(p5: float) -> dict:
    model = {"key": "m_96px", "size": 96, "quality": {"P@1": 1.0, "P@5": p5, "P@10": 0.5,
                                                     "mAP@1000": 0.4, "knn5_accuracy": 0.7},
             "index": {"recall@10": 1.0, "latency": {"p50_ms": 0.1, "p95_ms": 0.2},
                       "stats": {"mode": "exact", "index_bytes": 2_000_000}},
             "ingest": {"images_per_s": 50.0, "reused": False}, "query_embed_images_per_s": 60.0}
    return {"params": {"k": 10, "index_mode": "exact", "memory_budget": None}, "db_images": 100,
            "query_images": 10, "seconds": 3.0, "models": {"m": model}}


def test_is_done_requires_metrics_with_the_same_params(tmp_path: Path) -> None:
    assert not g.is_done(tmp_path, {"a": 1})
    (tmp_path / g.METRICS).write_text("{}")
    assert g.is_done(tmp_path, {"a": 1})  # metrics without a cell file: trusted
    (tmp_path / g.CELL_FILE).write_text(json.dumps({"params": {"a": 1}}))
    assert g.is_done(tmp_path, {"a": 1})
    assert not g.is_done(tmp_path, {"a": 2})


def test_summary_rows_csv_and_markdown() -> None:
    rows = g.summary_rows([("c1", "done", _metrics(0.9), ""), ("c2", "failed", None, "Boom: x|y")])
    assert rows[0]["P@5"] == 0.9 and rows[0]["index_mb"] == 2.0 and rows[0]["key"] == "m_96px"
    assert rows[1] == {"cell": "c2", "status": "failed", "error": "Boom: x|y"}
    parsed = list(csv.DictReader(io.StringIO(g.summary_csv(rows))))
    assert [r["cell"] for r in parsed] == ["c1", "c2"] and parsed[0]["P@5"] == "0.9000"
    assert list(parsed[0]) == list(g.SUMMARY_COLUMNS)
    md = g.summary_markdown(rows, "t")
    assert md.startswith("# t") and "| c1 | done | m_96px |" in md and "`c2`: Boom: x|y" in md


def test_cell_parameters_default_to_a_shared_store_per_experiment(tmp_path: Path) -> None:
    cell = g.Cell("c", {"db_size": 5})
    p = cell_parameters(cell, tmp_path / "run" / "c", tmp_path / "run")
    assert p["output_dir"] == str(tmp_path / "run" / "c")
    assert p["kv_url"] == f"rocksdb:{tmp_path / 'run' / 'kv'}" and p["progress"] is False
    own = cell_parameters(g.Cell("c", {"kv_url": "redis://h:1/0"}), tmp_path, tmp_path)
    assert own["kv_url"] == "redis://h:1/0"


def test_runner_skips_done_cells_carries_on_past_failures_and_summarizes(tmp_path: Path) -> None:
    exp = g.parse_experiment({"name": "t", "notebook": str(tmp_path / "missing.ipynb"),
                              "params": {"db_size": 5}, "grid": {"seed": [0, 1]}})
    run_dir = tmp_path / "runs" / "t"
    done = exp.cells()[0]
    params = cell_parameters(done, run_dir / done.name, run_dir.resolve())
    (run_dir / done.name).mkdir(parents=True)
    (run_dir / done.name / g.METRICS).write_text(json.dumps(_metrics(0.8)))
    (run_dir / done.name / g.CELL_FILE).write_text(json.dumps({"params": params}))
    report = run_experiment(exp, tmp_path / "runs")
    assert [(o.name, o.status) for o in report.outcomes] == [("seed-0", "skipped"), ("seed-1", "failed")]
    assert report.exit_code == 1 and report.failed[0].error
    assert (run_dir / "seed-1" / "error.txt").is_file()
    summary = (run_dir / "summary.csv").read_text()
    assert "seed-0,skipped,m," in summary and "seed-1,failed" in summary
    assert (run_dir / "summary.md").is_file() and (run_dir / "summary_p5.png").is_file()
    with pytest.raises(ValueError, match="unknown cells"):
        run_experiment(exp, tmp_path / "runs", only=["nope"])
