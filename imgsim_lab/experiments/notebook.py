"""Logging for notebooks: log lines as ordinary cell output (stdout), not red stderr boxes."""

from __future__ import annotations

import logging
import sys

from imgsim_lab.log import FORMAT, quiet_noisy_loggers

_MARK = "_imgsim_notebook"


def notebook_logging(level: int = logging.INFO) -> None:
    """imgsim_lab at ``level`` to stdout (shown as plain output); per-image events silenced."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _MARK, False) or isinstance(h, logging.StreamHandler) and \
                getattr(h, "stream", None) in (sys.stderr, sys.__stderr__):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    setattr(handler, _MARK, True)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("imgsim_lab").setLevel(level)
    logging.getLogger("imgsim_lab.ingest.events").setLevel(logging.WARNING)
    quiet_noisy_loggers()
