"""Notebooks 01 and 03 and the experiment runner, executed with papermill on tiny data.

CIFAR-10 comes from the shared archive: a few hundred images are copied into a small
zip and set up in a temporary data directory. Without the archive, generated images
(coloured shapes per class, in ``train/<class>`` and ``test/<class>`` folders) are used.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[2]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.zip"
NOTEBOOKS = REPO / "notebooks"
PER_CLASS = {"train": 40, "test": 10}

pytestmark = [pytest.mark.notebooks, pytest.mark.integration, pytest.mark.slow]


def _small_cifar_zip(dest: Path) -> Path:
    """The first PER_CLASS[split] images of every class of the shared zip, as a new zip."""
    taken: dict[tuple[str, str], int] = {}
    out = dest / "cifar10-small.zip"
    with zipfile.ZipFile(SHARED_CIFAR) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            key = (split, cls)
            if split in PER_CLASS and taken.get(key, 0) < PER_CLASS[split]:
                dst.writestr(f"{split}/{cls}/{parts[-1]}", src.read(info))
                taken[key] = taken.get(key, 0) + 1
    return out


def _generated_folder(dest: Path) -> Path:
    """Four classes of 32x32 images (a shape per class, random colours and positions)."""
    rng = np.random.default_rng(0)
    root = dest / "generated"
    for split, n in PER_CLASS.items():
        for cls in ("disc", "square", "hbar", "vbar"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (32, 32), tuple(int(x) for x in rng.integers(0, 256, 3)))
                d = ImageDraw.Draw(img)
                x, y = (int(v) for v in rng.integers(2, 14, 2))
                fill = tuple(int(v) for v in rng.integers(0, 256, 3))
                box = (x, y, x + 16, y + 16)
                shape = {"disc": ("ellipse", box), "square": ("rectangle", box),
                         "hbar": ("rectangle", (0, y, 31, y + 5)),
                         "vbar": ("rectangle", (x, 0, x + 5, 31))}[cls]
                getattr(d, shape[0])(shape[1], fill=fill)
                img.save(root / split / cls / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Notebook parameters naming the tiny data set (CIFAR-10 subset or generated)."""
    tmp = tmp_path_factory.mktemp("nbdata")
    if SHARED_CIFAR.is_file():
        from imgsim_lab.datasets import setup_cifar10

        data_dir = tmp / "data"
        setup_cifar10(data_dir / "cifar10", source=_small_cifar_zip(tmp), progress=False)
        return {"dataset": "cifar10", "data_dir": str(data_dir), "cifar10": True}
    return {"dataset": str(_generated_folder(tmp)), "data_dir": str(tmp / "data"), "cifar10": False}


def _execute(name: str, out_dir: Path, params: dict) -> dict:
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(NOTEBOOKS / name), str(out_dir / name), parameters=params,
                        kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS))
    return json.loads((out_dir / "metrics.json").read_text())


def test_notebooks_are_generated_without_outputs_and_parameterized() -> None:
    import nbformat

    check = subprocess.run([sys.executable, str(REPO / "scripts" / "make_notebooks.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in ("01_ingest.ipynb", "02_search.ipynb", "03_benchmark.ipynb"):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        assert nb.metadata.kernelspec.name == "python3" and nb.metadata.kernelspec.language == "python"
        assert nb.metadata.language_info.name == "python"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code")


def test_ingest_notebook_is_idempotent(dataset: dict, tmp_path: Path) -> None:
    params = {"dataset": dataset["dataset"], "data_dir": dataset["data_dir"], "limit": 200,
              "models": ["pixels", "color_hist"], "kv_url": f"rocksdb:{tmp_path / 'kv'}",
              "namespace": "nbtest", "index_mode": "exact", "progress": False}
    first = _execute("01_ingest.ipynb", tmp_path / "run1", {**params, "output_dir": str(tmp_path / "run1")})
    assert first["images"] == 200 and first["store"]["images"] == 200
    assert first["models"]["pixels"]["ingest"]["added"] == 200
    assert first["models"]["color_hist"]["ingest"]["embedded"] == 200
    assert all(m["index"]["ntotal"] == 200 and m["index"]["mode"] == "exact"
               for m in first["models"].values())
    # snapshots go under the data directory, never relative to the notebook's cwd
    assert all(Path(m["index"]["snapshot_dir"]).is_relative_to(dataset["data_dir"])
               for m in first["models"].values())
    again = _execute("01_ingest.ipynb", tmp_path / "run2", {**params, "output_dir": str(tmp_path / "run2")})
    assert all(m["ingest"]["added"] == 0 and m["ingest"]["duplicates"] == 200
               for m in again["models"].values())


def test_benchmark_notebook_ranks_the_cnn_above_pixels(dataset: dict, tmp_path: Path) -> None:
    n_db = sum(PER_CLASS["train"] for _ in range(10 if dataset["cifar10"] else 4))
    params = {"dataset": dataset["dataset"], "data_dir": dataset["data_dir"], "db_size": None,
              "query_size": None, "models": ["efficientnet_lite0", "pixels", "color_hist"],
              "input_size": 96, "output_dir": str(tmp_path), "latency_queries": 20,
              "example_queries": 3, "progress": False}
    m = _execute("03_benchmark.ipynb", tmp_path, params)
    assert m["db_images"] == n_db and set(m["models"]) == {"efficientnet_lite0", "pixels", "color_hist"}
    lite, pixels = m["models"]["efficientnet_lite0"], m["models"]["pixels"]
    assert lite["key"] == "efficientnet_lite0_96px" and pixels["size"] == 32
    for model in m["models"].values():
        q = model["quality"]
        assert all(0.0 <= q[k] <= 1.0 for k in ("P@1", "P@5", "P@10", "mAP@1000", "knn5_accuracy"))
        assert model["index"]["recall@10"] == 1.0  # the exact index agrees with brute force
        assert model["index"]["latency"]["p95_ms"] >= model["index"]["latency"]["p50_ms"] > 0
        assert model["db_count"] == n_db and len(model["examples"]) == 3
        assert sum(c["n"] for c in model["per_class"].values()) == m["query_images"]
    if dataset["cifar10"]:
        assert lite["quality"]["P@5"] > pixels["quality"]["P@5"] + 0.05
        assert lite["quality"]["mAP@1000"] > pixels["quality"]["mAP@1000"]
    for png in m["plots"].values():
        assert Path(png).stat().st_size > 1000
    executed = (tmp_path / "03_benchmark.ipynb").read_text()
    assert "image/png" in executed and "efficientnet_lite0_96px" in executed
    import nbformat

    nb = nbformat.read(tmp_path / "03_benchmark.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    # log lines are plain output (stdout), not red stderr boxes
    assert any(o.get("name") == "stdout" and " INFO " in o.get("text", "") for o in outputs)
    assert not [o for o in outputs if o.get("name") == "stderr" and " INFO " in o.get("text", "")]
    title = "CIFAR-10" if dataset["cifar10"] else Path(dataset["dataset"]).name
    assert f"# Benchmark: comparing models on {title} retrieval" in executed  # titled by its dataset
    assert not dataset["cifar10"] or "CIFAR-10" in executed


def test_experiment_runner_cli_runs_skips_and_reports_failures(dataset: dict, tmp_path: Path) -> None:
    exp = tmp_path / "tiny.yaml"
    exp.write_text(json.dumps({
        "name": "tiny", "notebook": str(NOTEBOOKS / "03_benchmark.ipynb"),
        "params": {"dataset": dataset["dataset"], "data_dir": dataset["data_dir"], "db_size": 200,
                   "query_size": 40, "latency_queries": 10, "example_queries": 2},
        "grid": [{"model": ["pixels"], "index_mode": ["exact", "budget"]}, {"model": ["no_such_model"]}],
    }))
    runs = tmp_path / "runs"
    cmd = [sys.executable, str(REPO / "scripts" / "run_experiments.py"), str(exp), "--runs-dir", str(runs)]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "1 of 3 cells failed: model-no_such_model" in first.stdout
    run_dir = runs / "tiny"
    rows = (run_dir / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("cell,status,model") and len(rows) == 4
    budget = json.loads((run_dir / "model-pixels__index_mode-budget" / "metrics.json").read_text())
    assert budget["models"]["pixels"]["index"]["recall@10"] > 0.5
    assert (run_dir / "model-no_such_model" / "error.txt").is_file()
    again = subprocess.run([sys.executable, "-m", "imgsim_lab.cli", "experiments", "run", str(exp),
                            "--runs-dir", str(runs), "--only", "model-pixels__index_mode-exact"],
                           capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "skipped  model-pixels__index_mode-exact" in again.stdout
    summary = (run_dir / "summary.csv").read_text()  # rewritten; the earlier failure is kept
    assert "model-no_such_model,failed" in summary and "unknown model" in summary
