"""Logging set-up for command-line runs: the console plus one log file per run."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from imgsim_lab import config

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Third-party loggers whose INFO lines read like failures (faiss: "Could not load library
#: with AVX512 support" when it falls back to its AVX2 build, which is normal).
NOISY_LOGGERS = ("faiss", "faiss.loader")


def quiet_noisy_loggers() -> None:
    """Show only warnings of :data:`NOISY_LOGGERS`."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class _TqdmSafeHandler(logging.StreamHandler):
    """A console handler that writes around a running tqdm bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            msg = self.format(record)
            tqdm.write(msg, file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(run_name: str = "imgsim", verbose: bool = False,
                  log_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Log to the console and to ``<data>/logs/<run_name>-<time>-<pid>.log``; return the file."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    # our own events go to the file at DEBUG (one line per image added, duplicate, ...)
    logging.getLogger("imgsim_lab").setLevel(logging.DEBUG)
    quiet_noisy_loggers()
    for h in list(root.handlers):
        if getattr(h, "_imgsim", False):
            root.removeHandler(h)
    console = _TqdmSafeHandler()
    console.setFormatter(logging.Formatter(FORMAT))
    console.setLevel(logging.DEBUG if verbose else logging.INFO)
    console._imgsim = True  # type: ignore[attr-defined]
    root.addHandler(console)
    directory = Path(log_dir) if log_dir else config.data_dir() / "logs"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = directory / f"{run_name}-{stamp}-{os.getpid()}.log"
        fh = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        logging.getLogger(__name__).warning("cannot write a log file under %s", directory)
        return None
    fh.setFormatter(logging.Formatter(FORMAT))
    fh.setLevel(logging.DEBUG)
    fh._imgsim = True  # type: ignore[attr-defined]
    root.addHandler(fh)
    return path
