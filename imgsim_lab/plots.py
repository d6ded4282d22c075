"""Benchmark figures, drawn with matplotlib's object API and saved as PNG.

No pyplot state is touched (figures are :class:`matplotlib.figure.Figure` objects), so
these work in scripts, worker processes and notebooks alike; a notebook shows the PNGs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from PIL import Image

log = logging.getLogger(__name__)

DPI = 110


@dataclass(frozen=True)
class Thumb:
    """One image tile of an example grid: its file, a caption and whether it is a hit."""

    path: str | None
    caption: str
    correct: bool | None = None


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    log.info("wrote %s", path)
    return path


def precision_at_k(metrics: Mapping[str, Mapping[str, float]], path: str | Path,
                   ks: Sequence[int] = (1, 5, 10), title: str = "precision@k") -> Path:
    """Grouped bars: ``metrics[name]["P@k"]`` for each ``k``, one colour per name."""
    names = list(metrics)
    fig = Figure(figsize=(max(5.0, 1.2 * len(names) + 2), 3.6))
    ax = fig.subplots()
    width = 0.8 / max(1, len(ks))
    x = np.arange(len(names))
    for j, k in enumerate(ks):
        vals = [metrics[n].get(f"P@{k}", np.nan) for n in names]
        bars = ax.bar(x + (j - (len(ks) - 1) / 2) * width, vals, width, label=f"P@{k}")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def recall_latency(points: Sequence[Mapping[str, float | str]], path: str | Path,
                   title: str = "index recall@10 vs query latency") -> Path:
    """Scatter of ``recall`` against ``p50_ms`` (whiskers to ``p95_ms``), one point per ``label``."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    for p in points:
        p50, p95 = float(p["p50_ms"]), float(p["p95_ms"])
        ax.errorbar([p50], [float(p["recall"])], xerr=[[0.0], [max(0.0, p95 - p50)]], fmt="o",
                    capsize=3, label=str(p["label"]))
    ax.set_xlabel("latency per query, ms (p50, whisker to p95)")
    ax.set_ylabel("recall@10 vs exact search")
    ax.set_ylim(min([0.0] + [float(p["recall"]) for p in points]) - 0.02, 1.02)
    ax.set_xscale("log")
    # a few readable ticks (1, 2, 5 x 10^n) instead of overlapping minor labels
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", labelsize=8)
    ax.set_title(title)
    if points and all("exact" in str(p["label"]) for p in points):
        ax.text(0.02, 0.5, "exact index: recall is 1 by construction\n(only latency differs)",
                transform=ax.transAxes, fontsize=8, color="#445", va="center")
    if points:
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _tile(ax, thumb: Thumb) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if thumb.path:
        try:
            with Image.open(thumb.path) as img:
                ax.imshow(np.asarray(img.convert("RGB")), interpolation="nearest")
        except OSError as exc:
            log.warning("cannot show %s: %s", thumb.path, exc)
    else:
        for side in ax.spines.values():
            side.set_visible(False)
    color = {True: "green", False: "red"}.get(thumb.correct, "black")  # type: ignore[arg-type]
    ax.set_title(thumb.caption, fontsize=7, color=color)
    if thumb.correct is not None:
        for side in ax.spines.values():
            side.set_edgecolor(color)
            side.set_linewidth(2)


def example_grid(queries: Sequence[Thumb], results: Mapping[str, Sequence[Sequence[Thumb]]],
                 path: str | Path, title: str = "example queries: each model's top results") -> Path:
    """One row per (query, model): the query, then that model's ranked results.

    ``results[model][q]`` are the thumbnails of query ``q``'s results (captions hold scores;
    ``correct`` colours them green/red).
    """
    models = list(results)
    ncols = 1 + max((len(r) for m in models for r in results[m]), default=0)
    nrows = len(queries) * max(1, len(models))
    fig = Figure(figsize=(1.25 * ncols + 1.0, 1.35 * nrows + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    for qi, q in enumerate(queries):
        for mi, m in enumerate(models or [""]):
            row = axes[qi * max(1, len(models)) + mi]
            _tile(row[0], q if mi == 0 else Thumb(None, ""))
            row[0].set_ylabel(m, fontsize=7, rotation=0, ha="right", va="center")
            hits = results[m][qi] if m else []
            for c in range(1, ncols):
                _tile(row[c], hits[c - 1] if c - 1 < len(hits) else Thumb(None, ""))
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def per_class_heatmap(tables: Mapping[str, Mapping[str, Mapping[str, float]]], path: str | Path,
                      metric: str = "P@10") -> Path:
    """Heatmap of ``tables[model][class][metric]``: models as rows, classes as columns."""
    models = list(tables)
    classes = sorted({c for t in tables.values() for c in t})
    data = np.array([[tables[m].get(c, {}).get(metric, np.nan) for c in classes] for m in models])
    fig = Figure(figsize=(0.8 * len(classes) + 2.5, 0.45 * len(models) + 1.4))
    ax = fig.subplots()
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(classes)), classes, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), models, fontsize=8)
    for i in range(len(models)):
        for j in range(len(classes)):
            if np.isfinite(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if data[i, j] < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax.set_title(f"per-class {metric}")
    return _save(fig, path)


def metric_bars(rows: Sequence[Mapping[str, object]], metric: str, path: str | Path,
                label_key: str = "label") -> Path:
    """Horizontal bars of ``row[metric]`` for each row (e.g. one per experiment cell × model)."""
    rows = [r for r in rows if isinstance(r.get(metric), int | float)]
    fig = Figure(figsize=(6.5, 0.32 * len(rows) + 1.2))
    ax = fig.subplots()
    y = np.arange(len(rows))
    vals = [float(r[metric]) for r in rows]  # type: ignore[arg-type]
    bars = ax.barh(y, vals)
    ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_yticks(y, [str(r.get(label_key, "")) for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(metric)
    ax.set_title(f"{metric} across experiment cells")
    return _save(fig, path)
