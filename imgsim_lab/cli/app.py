"""``imgsim app``: serve the search app (notebooks/02_search.ipynb) as a web page with Voila."""

from __future__ import annotations

import argparse
import logging

from imgsim_lab.cli._common import UsageError, add_store_args, positive_int

NAME = "app"
HELP = "serve the interactive search app as a web page with Voila on 127.0.0.1"
log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 8866
NOTEBOOK = "notebooks/02_search.ipynb"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port on {HOST} (default {DEFAULT_PORT}; 0 picks a free one)")
    add_store_args(parser)
    parser.add_argument("--model", default=None,
                        help="model key to start with, e.g. efficientnet_lite0 "
                             "(default: the one with the most images in the store)")
    parser.add_argument("--compare", action="append", default=[], metavar="MODEL",
                        help="also show this model's results side by side (repeatable, at most 2)")
    parser.add_argument("--k", type=positive_int, default=5, help="results per upload (default 5)")
    parser.add_argument("--add", action=argparse.BooleanOptionalAction, default=True,
                        help="add uploads to the collection (default on; --no-add to only search)")
    parser.add_argument("--notebook", default=None, help=f"notebook to serve (default {NOTEBOOK})")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether ``HOST:port`` can be listened on now."""
    import socket

    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def kernel_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment variables read by the notebook's parameters cell (and the library)."""
    from imgsim_lab import config

    env = config.Settings.from_env(kv_url=args.kv, namespace=args.namespace).env()
    env.update({"IMGSIM_APP_K": str(args.k), "IMGSIM_APP_ADD": "1" if args.add else "0",
                "IMGSIM_APP_COMPARE": ",".join(args.compare)})
    if args.model:
        env["IMGSIM_APP_MODEL"] = args.model
    return env


def _wait_listening(port: int, proc, timeout: float = 60.0) -> bool:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def run(args: argparse.Namespace) -> int:
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from imgsim_lab.app.voila_server import jupyter_path_env, voila_options
    from imgsim_lab.config import project_root

    notebook = Path(args.notebook) if args.notebook else project_root() / NOTEBOOK
    if not notebook.is_file():
        raise UsageError(f"notebook {notebook} not found (generate it with scripts/make_notebooks.py)")
    if args.port and not port_is_free(args.port):
        raise UsageError(f"port {args.port} on {HOST} is already in use (another imgsim app?): "
                         f"pick another with --port N, or --port 0 for any free port")
    port = args.port or _free_port()
    env = {**os.environ, **kernel_env(args), "JUPYTER_PATH": jupyter_path_env()}
    cmd = [sys.executable, "-m", "imgsim_lab.app.voila_server", str(notebook.resolve()), f"--port={port}",
           "--no-browser", f"--Voila.ip={HOST}", "--Voila.port_retries=0", "--show_tracebacks=False",
           "--theme=light", *voila_options()]
    log.debug("starting Voila: %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    try:
        if _wait_listening(port, proc):
            print(f"imgsim search app: http://{HOST}:{port}/  (Ctrl-C to stop)", flush=True)
        elif proc.poll() is not None:
            print(f"imgsim app: Voila stopped before serving (exit status {proc.returncode}); "
                  "see the messages above", file=sys.stderr)
            return 2
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            return proc.wait()
