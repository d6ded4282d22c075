"""Benchmarks and experiment grids on CIFAR-10 (the logic behind notebooks 01 and 03).

- :func:`run_benchmark` — one benchmark run (``notebooks/03_benchmark.ipynb``);
- :func:`run_ingest` — ingest and index a subset (``notebooks/01_ingest.ipynb``);
- :func:`load_experiment` / :func:`run_experiment` — YAML grids executed with papermill;
- :func:`demo_main` — ``make demo``.

Importing this package is light (no torch); heavy imports happen inside the functions.
"""

from imgsim_lab.experiments.benchmark import BenchmarkParams, run_benchmark
from imgsim_lab.experiments.demo import demo_main
from imgsim_lab.experiments.grid import Cell, Experiment, expand_grid, load_experiment
from imgsim_lab.experiments.ingest_run import IngestParams, run_ingest
from imgsim_lab.experiments.runner import RunReport, run_experiment

__all__ = ["BenchmarkParams", "Cell", "Experiment", "IngestParams", "RunReport", "demo_main",
           "expand_grid", "load_experiment", "run_benchmark", "run_experiment", "run_ingest"]
