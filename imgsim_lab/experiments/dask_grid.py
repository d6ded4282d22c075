"""Experiment grids on a Dask cluster: each cell's notebook runs through papermill on a worker.

The same cells, parameters, skip rule, ``error.txt`` on failure and summary as
:func:`imgsim_lab.experiments.runner.run_experiment`; only the order in which cells
finish differs. One thing must change: serial cells share one embedded store
(``rocksdb:<runs>/<experiment>/kv``), which admits one writer, so on the cluster each
cell whose store is embedded gets its own, ``rocksdb:<cell dir>/kv`` (its images are
embedded in that cell). Cells with a server store (``kv_url: redis://…`` in the YAML or
``--set kv_url=…``) share it, as serially. Metrics, summary.csv/md and plots equal the
serial ones apart from timings (and ``ingest_images_per_s``, which a serial cell that
reuses another cell's embeddings leaves empty).
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

from imgsim_lab.config import project_root as repo_root
from imgsim_lab.experiments.grid import CELL_FILE, METRICS, Cell, Experiment, is_done
from imgsim_lab.experiments.runner import (
    ERROR_FILE,
    CellOutcome,
    RunReport,
    cell_parameters,
    default_runs_dir,
    execute_cell,
    write_summary,
)

log = logging.getLogger(__name__)


def dask_cell_parameters(cell: Cell, cell_dir: Path, run_dir: Path) -> dict[str, Any]:
    """:func:`cell_parameters`, with a private embedded store per cell (one writer each)."""
    params = cell_parameters(cell, cell_dir, run_dir)
    if str(params.get("kv_url") or "").startswith("rocksdb:"):
        params["kv_url"] = f"rocksdb:{cell_dir / 'kv'}"
    return params


def run_cell(experiment: str, cell_name: str, notebook: str, cell_dir: str, params: dict[str, Any],
             timeout: float | None) -> dict[str, Any]:
    """Execute one cell (on a worker); never raises for a failing notebook."""
    d = Path(cell_dir)
    t0 = time.perf_counter()
    (d / METRICS).unlink(missing_ok=True)
    d.mkdir(parents=True, exist_ok=True)
    (d / CELL_FILE).write_text(json.dumps({"experiment": experiment, "cell": cell_name,
                                           "params": params}, indent=2) + "\n")
    try:
        execute_cell(Path(notebook), d, params, timeout)
    except Exception as exc:  # a failed cell is reported; the others still run
        name = getattr(exc, "ename", type(exc).__name__)
        value = getattr(exc, "evalue", str(exc))
        msg = f"{name}: {value}".strip().splitlines()[0][:300]
        (d / ERROR_FILE).write_text(f"{msg}\n\n{traceback.format_exc()}", encoding="utf-8")
        return {"status": "failed", "seconds": time.perf_counter() - t0, "error": msg}
    (d / ERROR_FILE).unlink(missing_ok=True)
    return {"status": "done", "seconds": time.perf_counter() - t0, "error": ""}


def _notebook(exp: Experiment) -> Path:
    base = exp.path.resolve().parent.parent if exp.path else repo_root()
    nb = Path(exp.notebook)
    path = nb if nb.is_absolute() else (base / nb).resolve()
    return path if path.is_file() else (repo_root() / nb).resolve()


def run_experiment_dask(exp: Experiment, client: Any, runs_dir: Path | None = None, *,
                        force: bool = False, only: list[str] | None = None,
                        timeout: float | None = None, progress: bool = True) -> RunReport:
    """Run (or skip) every cell of ``exp`` on the Dask ``client``'s workers, then summarize."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    run_dir = (runs_dir / exp.name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    notebook = _notebook(exp)
    cells = [c for c in exp.cells() if not only or c.name in only]
    if only and len(cells) != len(only):
        known = [c.name for c in exp.cells()]
        raise ValueError(f"unknown cells {sorted(set(only) - set(known))}; cells: {known}")
    outcomes: dict[str, CellOutcome] = {}
    futures = {}
    for cell in cells:
        cell_dir = run_dir / cell.name
        params = dask_cell_parameters(cell, cell_dir, run_dir)
        if not force and is_done(cell_dir, params):
            log.info("%s: done already, skipped", cell.name)
            outcomes[cell.name] = CellOutcome(cell.name, "skipped")
            continue
        fut = client.submit(run_cell, exp.name, cell.name, str(notebook), str(cell_dir), params, timeout,
                            pure=False, key=f"imgsim-cell-{exp.name}-{cell.name}-{time.time_ns()}")
        futures[fut] = cell.name
    log.info("%d cells on %d workers (%d skipped)", len(futures),
             len(client.scheduler_info().get("workers", {})), len(outcomes))
    bar = tqdm(total=len(futures), desc=f"experiment {exp.name} (dask)", unit="cell", disable=not progress)
    for fut in as_completed(list(futures), loop=client.loop):
        name = futures[fut]
        res = fut.result()
        outcomes[name] = CellOutcome(name, res["status"], res["seconds"], res["error"])
        if res["status"] == "failed":
            log.error("%s failed after %.0fs: %s", name, res["seconds"], res["error"])
        else:
            log.info("%s done in %.0fs", name, res["seconds"])
        bar.update(1)
    bar.close()
    report = RunReport(exp.name, run_dir, [outcomes[c.name] for c in cells])
    report.summary_md = write_summary(exp, run_dir, report)
    return report
