"""Experiment grids and the notebooks' ``dask`` parameter on a real LocalCluster (2 x 1 thread)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from imagegen import CLASSES, image_bytes, make_folder

distributed = pytest.importorskip("distributed")

from imgsim_lab.experiments.benchmark import run_benchmark  # noqa: E402
from imgsim_lab.experiments.dask_grid import run_experiment_dask  # noqa: E402
from imgsim_lab.experiments.grid import parse_experiment  # noqa: E402
from imgsim_lab.experiments.runner import run_experiment  # noqa: E402
from imgsim_lab.scaleout.cluster import close_shared_clients  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.notebooks]
REPO = Path(__file__).resolve().parents[2]
TIMING_COLUMNS = {"p50_ms", "p95_ms", "seconds", "ingest_images_per_s", "query_embed_images_per_s"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/<class>/ (90 images) and test/<class>/ (30) of three colour classes."""
    root = tmp_path_factory.mktemp("grid") / "colours"
    make_folder(root / "train", 90)
    for i in range(30):  # seed 3000 + i: other noise, same class colour (seed % 3)
        d = root / "test" / CLASSES[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"q{i:03d}.png").write_bytes(image_bytes(3000 + i))
    return root


def _without_timings(csv_text: str) -> list[dict]:
    lines = csv_text.splitlines()
    head = lines[0].split(",")
    return [{k: v for k, v in zip(head, row.split(","), strict=True) if k not in TIMING_COLUMNS}
            for row in lines[1:]]


def test_two_cell_grid_on_two_workers_matches_serial(dataset, tmp_path, dask_client) -> None:
    exp = parse_experiment({
        "name": "duo", "notebook": str(REPO / "notebooks" / "03_benchmark.ipynb"),
        "params": {"dataset": str(dataset), "data_dir": str(tmp_path / "data"), "db_size": 90,
                   "query_size": 30, "latency_queries": 5, "example_queries": 2, "index_mode": "exact"},
        "grid": {"model": ["pixels", "color_hist"]},
    })
    serial = run_experiment(exp, tmp_path / "serial")
    assert serial.exit_code == 0, [o.error for o in serial.outcomes]
    dist = run_experiment_dask(exp, dask_client, tmp_path / "dask", progress=False)
    assert dist.exit_code == 0, [o.error for o in dist.outcomes]
    assert [o.name for o in dist.outcomes] == [o.name for o in serial.outcomes]
    s_csv = (tmp_path / "serial" / "duo" / "summary.csv").read_text()
    d_csv = (tmp_path / "dask" / "duo" / "summary.csv").read_text()
    assert _without_timings(d_csv) == _without_timings(s_csv) and len(_without_timings(s_csv)) == 2
    for plot in ("summary_p5.png", "summary_map.png"):
        a, b = (tmp_path / run / "duo" / plot for run in ("serial", "dask"))
        assert a.read_bytes() == b.read_bytes(), plot
    for cell in exp.cells():
        a = json.loads((tmp_path / "serial" / "duo" / cell.name / "metrics.json").read_text())
        b = json.loads((tmp_path / "dask" / "duo" / cell.name / "metrics.json").read_text())
        for name, m in a["models"].items():
            assert b["models"][name]["quality"] == m["quality"]
            assert b["models"][name]["examples"] == m["examples"]
    again = run_experiment_dask(exp, dask_client, tmp_path / "dask", progress=False)
    assert {o.status for o in again.outcomes} == {"skipped"}


def test_benchmark_dask_parameter_gives_the_serial_metrics(dataset, tmp_path, dask_client) -> None:
    params = {"dataset": str(dataset), "data_dir": str(tmp_path / "data"), "db_size": 90, "query_size": 30,
              "models": ["pixels"], "latency_queries": 5, "example_queries": 2, "progress": False}
    serial = run_benchmark({**params, "output_dir": str(tmp_path / "s")})
    try:
        dist = run_benchmark({**params, "output_dir": str(tmp_path / "d"),
                              "dask": dask_client.scheduler.address})
    finally:
        close_shared_clients()  # before the fixture stops the cluster it is connected to
    assert dist["models"]["pixels"]["quality"] == serial["models"]["pixels"]["quality"]
    assert dist["models"]["pixels"]["ingest"]["added"] == serial["models"]["pixels"]["ingest"]["added"] == 90


def test_notebooks_take_a_dask_parameter() -> None:
    for name in ("01_ingest.ipynb", "03_benchmark.ipynb"):
        nb = json.loads((REPO / "notebooks" / name).read_text())
        params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
        assert any(line.startswith("dask = None") for line in "".join(params["source"]).splitlines())
