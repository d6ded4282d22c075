"""Experiment definitions (YAML), their grid of cells, and the summary across cells.

An experiment file::

    name: cifar10_index                 # default: the file's stem
    description: exact vs memory-budgeted index
    notebook: notebooks/03_benchmark.ipynb   # default
    params: {db_size: 5000, query_size: 1000, models: [efficientnet_lite0]}   # fixed
    grid:                               # a dict of lists (their product) ...
      - {index_mode: [exact]}           # ... or a list of such dicts (the union of products)
      - {index_mode: [budget], memory_budget: [0.25, 0.1]}

Each grid point is a *cell*: the fixed params updated with the point's values (a grid key
``model`` sets ``models: [value]``). A cell is named after its grid values
(``index_mode-budget__memory_budget-0.25``) and runs into ``<runs>/<experiment>/<cell>/``.
Everything here is pure (no notebook is executed), so it is unit-tested.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_NOTEBOOK = "notebooks/03_benchmark.ipynb"
METRICS = "metrics.json"
CELL_FILE = "cell.json"

#: Columns of summary.csv / summary.md, in order.
SUMMARY_COLUMNS = ("cell", "status", "model", "key", "size", "db", "queries", "index_mode",
                   "memory_budget", "P@1", "P@5", "P@10", "mAP@1000", "mAP@all", "knn5_accuracy",
                   "train_seconds", "recall@10",
                   "p50_ms", "p95_ms", "index_mode_used", "index_mb", "ingest_images_per_s",
                   "query_embed_images_per_s", "seconds", "error")


@dataclass(frozen=True)
class Cell:
    """One grid point: its directory name and the notebook parameters it runs with."""

    name: str
    params: dict[str, Any]
    varying: dict[str, Any] = field(default_factory=dict)


@dataclass
class Experiment:
    """A parsed experiment file."""

    name: str
    params: dict[str, Any]
    grid: list[dict[str, list[Any]]]
    notebook: str = DEFAULT_NOTEBOOK
    description: str = ""
    path: Path | None = None

    def cells(self) -> list[Cell]:
        return expand_grid(self.params, self.grid)


def load_experiment(path: str | Path) -> Experiment:
    """Parse and validate an experiment YAML file."""
    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return parse_experiment(raw, default_name=path.stem, path=path)


def parse_experiment(raw: Mapping[str, Any], default_name: str = "experiment",
                     path: Path | None = None) -> Experiment:
    """Validate a parsed YAML mapping (keys: name, description, notebook, params, grid)."""
    if not isinstance(raw, Mapping):
        raise ValueError("an experiment file must be a mapping")
    unknown = set(raw) - {"name", "description", "notebook", "params", "grid"}
    if unknown:
        raise ValueError(f"unknown experiment keys {sorted(unknown)}")
    params = dict(raw.get("params") or {})
    grid = raw.get("grid") or {}
    grids = [grid] if isinstance(grid, Mapping) else list(grid)
    clean = []
    for g in grids:
        if not isinstance(g, Mapping):
            raise ValueError(f"grid entries must be mappings of lists, got {g!r}")
        clean.append({str(k): (list(v) if isinstance(v, list | tuple) else [v]) for k, v in g.items()})
    name = str(raw.get("name") or default_name)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"experiment name {name!r} must match [A-Za-z0-9_.-]+")
    return Experiment(name, params, clean, str(raw.get("notebook") or DEFAULT_NOTEBOOK),
                      str(raw.get("description") or ""), path)


def slug(value: Any) -> str:
    """A directory-safe rendering of a parameter value."""
    if isinstance(value, list | tuple):
        text = "+".join(slug(v) for v in value)
    elif isinstance(value, Mapping):
        text = "+".join(f"{k}={slug(v)}" for k, v in sorted(value.items()))
    elif value is None:
        text = "none"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", text).strip("-") or "x"


def _apply(params: dict[str, Any], key: str, value: Any) -> None:
    if key == "model":
        params["models"] = [value]
    else:
        params[key] = value


def expand_grid(fixed: Mapping[str, Any], grids: Sequence[Mapping[str, Sequence[Any]]]) -> list[Cell]:
    """Every cell of the union of the grids' products, in file order, duplicates dropped."""
    cells: list[Cell] = []
    seen: set[str] = set()
    for grid in grids or [{}]:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            params = json.loads(json.dumps(dict(fixed)))  # deep copy, JSON-able only
            varying = dict(zip(keys, values, strict=True))
            for k, v in varying.items():
                _apply(params, k, v)
            name = "__".join(f"{k}-{slug(v)}" for k, v in varying.items()) or "default"
            canon = json.dumps(params, sort_keys=True)
            if canon in seen:
                continue
            seen.add(canon)
            if any(c.name == name for c in cells):
                name = f"{name}__{len(cells)}"
            cells.append(Cell(name, params, varying))
    return cells


def apply_overrides(exp: Experiment, overrides: Mapping[str, Any]) -> Experiment:
    """A copy with ``overrides`` fixed (an overridden key is removed from the grid)."""
    if not overrides:
        return exp
    params = {**exp.params}
    for k, v in overrides.items():
        _apply(params, k, v)
    dropped = {"models" if k == "model" else k for k in overrides} | set(overrides)
    grid = [{k: v for k, v in g.items() if k not in dropped} for g in exp.grid]
    suffix = "__".join(f"{k}-{slug(v)}" for k, v in sorted(overrides.items()))
    return Experiment(f"{exp.name}__{suffix}", params, grid, exp.notebook, exp.description, exp.path)


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (``db_size=50000``, ``models=[pixels]``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} must look like key=value")
    return key.strip(), yaml.safe_load(value)


# --------------------------------------------------------------------------- cell state


def is_done(cell_dir: Path, params: Mapping[str, Any]) -> bool:
    """Whether ``cell_dir`` holds finished results of exactly these parameters."""
    if not (cell_dir / METRICS).is_file():
        return False
    try:
        recorded = json.loads((cell_dir / CELL_FILE).read_text(encoding="utf-8"))["params"]
    except (OSError, ValueError, KeyError):
        return True  # metrics without a cell file: produced by hand; trust it
    return json.dumps(recorded, sort_keys=True) == json.dumps(dict(params), sort_keys=True)


# --------------------------------------------------------------------------- summary


def summary_rows(cell_status: Sequence[tuple[str, str, dict[str, Any] | None, str]]) -> list[dict[str, Any]]:
    """Rows (one per cell × model) from ``(cell, status, metrics or None, error)``."""
    rows: list[dict[str, Any]] = []
    for cell, status, metrics, error in cell_status:
        if not metrics or not metrics.get("models"):
            rows.append({"cell": cell, "status": status, "error": error})
            continue
        p = metrics["params"]
        k = p.get("k", 10)
        for name, m in metrics["models"].items():
            q, ix = m["quality"], m["index"]
            ingest = m.get("ingest", {})
            rows.append({
                "cell": cell, "status": status, "model": name, "key": m["key"], "size": m["size"],
                "db": metrics.get("db_images"), "queries": metrics.get("query_images"),
                "index_mode": p.get("index_mode"), "memory_budget": p.get("memory_budget"),
                "P@1": q.get("P@1"), "P@5": q.get("P@5"), "P@10": q.get("P@10"),
                "mAP@1000": q.get("mAP@1000"), "knn5_accuracy": q.get("knn5_accuracy"),
                "mAP@all": q.get("mAP@all"), "train_seconds": m.get("derived", {}).get("train_seconds"),
                "recall@10": ix.get(f"recall@{k}"), "p50_ms": ix["latency"]["p50_ms"],
                "p95_ms": ix["latency"]["p95_ms"], "index_mode_used": ix["stats"]["mode"],
                "index_mb": ix["stats"]["index_bytes"] / 1e6,
                "ingest_images_per_s": None if ingest.get("reused") else ingest.get("images_per_s"),
                "query_embed_images_per_s": m.get("query_embed_images_per_s"),
                "seconds": metrics.get("seconds"), "error": error,
            })
    return rows


def _cell_text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


def summary_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _cell_text(r.get(c)) for c in SUMMARY_COLUMNS})
    return buf.getvalue()


#: The columns shown in summary.md (the CSV has them all).
MD_COLUMNS = ("cell", "status", "key", "db", "queries", "index_mode_used", "P@1", "P@5", "P@10",
              "mAP@1000", "mAP@all", "knn5_accuracy", "train_seconds", "recall@10", "p50_ms", "p95_ms",
              "ingest_images_per_s")


def summary_markdown(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """A markdown table of the main columns (errors listed below it)."""
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_cell_text(r.get(c)).replace("|", "/") for c in MD_COLUMNS) + " |")
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "Failed cells:", ""] + [f"- `{r['cell']}`: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"
