"""Run an experiment: each grid cell executes 03_benchmark.ipynb with papermill.

``<runs>/<experiment>/<cell>/`` receives the executed notebook, ``metrics.json`` and the
PNGs; ``<runs>/<experiment>/`` gets ``summary.csv``, ``summary.md`` and comparison plots.
A cell whose ``metrics.json`` exists for the same parameters is skipped; a failing cell
is reported and the others still run. All cells of one experiment share one embedded
store, ``rocksdb:<runs>/<experiment>/kv``, with a namespace per database subset, so the
images of a database are embedded once per model across cells and reruns; cells run one
after the other, so the store's single writer is never contended.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgsim_lab.config import project_root as repo_root
from imgsim_lab.experiments.grid import (
    CELL_FILE,
    METRICS,
    Cell,
    Experiment,
    is_done,
    summary_csv,
    summary_markdown,
    summary_rows,
)
from imgsim_lab.experiments.paths import resolve_dataset
from imgsim_lab.experiments.paths import runs_dir as _runs_dir

log = logging.getLogger(__name__)

KERNEL = "python3"
#: Written into a cell's directory when it fails: the short error, a blank line, the traceback.
ERROR_FILE = "error.txt"


def default_runs_dir() -> Path:
    return _runs_dir()


@dataclass
class CellOutcome:
    name: str
    status: str  # "done" | "skipped" | "failed"
    seconds: float = 0.0
    error: str = ""


@dataclass
class RunReport:
    """What :func:`run_experiment` did; ``failed`` is empty when everything worked."""

    experiment: str
    directory: Path
    outcomes: list[CellOutcome] = field(default_factory=list)
    summary_md: str = ""

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def _resolve(path: str | Path, base: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (base / p).resolve()


def cell_parameters(cell: Cell, cell_dir: Path, run_dir: Path) -> dict[str, Any]:
    """The papermill parameters of a cell: its params plus output dir and the shared store."""
    params = dict(cell.params)
    # relative paths mean the caller's working directory, not the kernel's (notebooks/)
    if isinstance(params.get("dataset"), str):
        params["dataset"] = resolve_dataset(params["dataset"])
    for key in ("data_dir", "cifar10_source"):
        if isinstance(params.get(key), str):
            params[key] = str(Path(params[key]).expanduser().resolve())
    params["output_dir"] = str(cell_dir)
    params.setdefault("kv_url", f"rocksdb:{run_dir / 'kv'}")
    params.setdefault("progress", False)
    return params


def execute_cell(notebook: Path, cell_dir: Path, parameters: dict[str, Any],
                 timeout: float | None = None) -> None:
    """Execute ``notebook`` with ``parameters`` into ``cell_dir`` (raises on failure)."""
    import papermill as pm

    cell_dir.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(notebook), str(cell_dir / notebook.name), parameters=parameters,
                        kernel_name=KERNEL, progress_bar=False, log_output=True, cwd=str(notebook.parent),
                        execution_timeout=timeout)
    if not (cell_dir / METRICS).is_file():
        raise RuntimeError(f"the notebook finished without writing {cell_dir / METRICS}")


def run_experiment(exp: Experiment, runs_dir: Path | None = None, *, force: bool = False,
                   only: list[str] | None = None, timeout: float | None = None) -> RunReport:
    """Run (or skip) every cell of ``exp``, then write the summary; never stops at a failure."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir()
    run_dir = (runs_dir / exp.name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    base = exp.path.resolve().parent.parent if exp.path else repo_root()
    notebook = _resolve(exp.notebook, base)
    if not notebook.is_file():
        notebook = _resolve(exp.notebook, repo_root())
    report = RunReport(exp.name, run_dir)
    cells = [c for c in exp.cells() if not only or c.name in only]
    if only and len(cells) != len(only):
        known = [c.name for c in exp.cells()]
        raise ValueError(f"unknown cells {sorted(set(only) - set(known))}; cells: {known}")
    for i, cell in enumerate(cells, 1):
        cell_dir = run_dir / cell.name
        params = cell_parameters(cell, cell_dir, run_dir)
        if not force and is_done(cell_dir, params):
            log.info("[%d/%d] %s: done already, skipped", i, len(cells), cell.name)
            report.outcomes.append(CellOutcome(cell.name, "skipped"))
            continue
        log.info("[%d/%d] %s: running %s", i, len(cells), cell.name, notebook.name)
        t0 = time.perf_counter()
        (cell_dir / METRICS).unlink(missing_ok=True)
        cell_dir.mkdir(parents=True, exist_ok=True)
        (cell_dir / CELL_FILE).write_text(json.dumps({"experiment": exp.name, "cell": cell.name,
                                                     "params": params}, indent=2) + "\n")
        try:
            execute_cell(notebook, cell_dir, params, timeout)
        except Exception as exc:  # a failed cell is reported; the others still run
            msg = _short_error(exc)
            (cell_dir / ERROR_FILE).write_text(f"{msg}\n\n{traceback.format_exc()}", encoding="utf-8")
            log.error("%s failed after %.0fs: %s (details in %s)", cell.name,
                      time.perf_counter() - t0, msg, cell_dir / ERROR_FILE)
            report.outcomes.append(CellOutcome(cell.name, "failed", time.perf_counter() - t0, msg))
            continue
        (cell_dir / ERROR_FILE).unlink(missing_ok=True)
        report.outcomes.append(CellOutcome(cell.name, "done", time.perf_counter() - t0))
        log.info("%s done in %.0fs", cell.name, time.perf_counter() - t0)
    report.summary_md = write_summary(exp, run_dir, report)
    return report


def _short_error(exc: Exception) -> str:
    name = getattr(exc, "ename", type(exc).__name__)
    value = getattr(exc, "evalue", str(exc))
    return f"{name}: {value}".strip().splitlines()[0][:300]


def write_summary(exp: Experiment, run_dir: Path, report: RunReport | None = None) -> str:
    """summary.csv, summary.md and comparison PNGs from every cell's metrics.json."""
    from imgsim_lab import plots

    outcomes = {o.name: o for o in (report.outcomes if report else [])}
    status = []
    for cell in exp.cells():
        cell_dir = run_dir / cell.name
        metrics = None
        if (cell_dir / METRICS).is_file():
            metrics = json.loads((cell_dir / METRICS).read_text(encoding="utf-8"))
        o = outcomes.get(cell.name)
        error = o.error if o else ""
        if o:
            state = o.status
        elif metrics:
            state = "done"
        elif (cell_dir / ERROR_FILE).is_file():
            state = "failed"
            error = (cell_dir / ERROR_FILE).read_text(encoding="utf-8").split("\n", 1)[0]
        else:
            state = "not run"
        status.append((cell.name, state, metrics if state != "failed" else None, error))
    rows = summary_rows(status)
    (run_dir / "summary.csv").write_text(summary_csv(rows), encoding="utf-8")
    md = summary_markdown(rows, title=f"{exp.name}: {exp.description}".rstrip(": "))
    ok = [dict(r, label=f"{r['cell']} · {r['key']}") for r in rows if r.get("key")]
    if ok:
        md += ("\n![P@5](summary_p5.png)\n![mAP@1000](summary_map.png)\n"
               "![recall vs latency](summary_recall_latency.png)\n")
        plots.metric_bars(ok, "P@5", run_dir / "summary_p5.png")
        plots.metric_bars(ok, "mAP@1000", run_dir / "summary_map.png")
        plots.recall_latency([{"label": r["label"], "recall": r["recall@10"], "p50_ms": r["p50_ms"],
                               "p95_ms": r["p95_ms"]} for r in ok if r.get("recall@10") is not None],
                             run_dir / "summary_recall_latency.png")
    (run_dir / "summary.md").write_text(md, encoding="utf-8")
    log.info("summary: %s", run_dir / "summary.md")
    return md
