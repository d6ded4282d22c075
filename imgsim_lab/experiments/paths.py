"""Where experiment data and results go, independent of the working directory."""

from __future__ import annotations

import os
from pathlib import Path

from imgsim_lab import config


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir`` (relative: to the working directory), else the configured data directory."""
    return config.data_dir(data_dir)


def runs_dir() -> Path:
    """``<project>/experiments/runs``: where experiment and notebook results go by default."""
    return config.project_root() / "experiments" / "runs"


def resolve_output_dir(output_dir: str | os.PathLike[str] | None, default: str = "adhoc") -> Path:
    """``output_dir`` made absolute (created), else ``<runs>/<default>``."""
    path = (Path(output_dir).expanduser() if output_dir else runs_dir() / default).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_dataset(dataset: str, base: str | os.PathLike[str] | None = None) -> str:
    """``cifar10`` as is; a folder made absolute against ``base`` (default: the working directory).

    Called where the user's command runs, before a notebook's kernel (whose working
    directory is ``notebooks/``) sees the parameter.
    """
    if dataset == "cifar10" or dataset.startswith("cifar10:"):
        return dataset
    path = Path(dataset).expanduser()
    if not path.is_absolute():
        path = Path(base or Path.cwd()) / path
    return str(path.resolve())
