"""Run Voila for the search app: ``python -m imgsim_lab.app.voila_server NOTEBOOK [voila options]``.

Two fixes over plain ``voila``, so that a closed tab does not leave its kernel (~650 MB)
running:

- Voila's page asks the server to shut its kernel down on ``beforeunload`` with a POST
  to ``/voila/api/shutdown/<kernel id>`` that carries no ``_xsrf`` token, and the
  server refuses it (``403 '_xsrf' argument missing``). Here that one handler checks
  the request's Origin instead (a cross-site page is still refused); the kernel id in
  the URL is a secret only the page holds.
- Idle kernels without a connection are culled (``CULL_*``), a second line of defence
  for tabs that vanish without a word (a crashed browser, a dropped network).

The ``imgsim`` Voila template (``share/jupyter/voila/templates/imgsim``) is Voila's lab
template without its CDN stylesheets, so the page makes no request outside this server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: A kernel idle this long with no browser connected is shut down (seconds).
CULL_IDLE_TIMEOUT = 120
#: How often idle kernels are looked for (seconds).
CULL_INTERVAL = 20
TEMPLATE = "imgsim"
SHARE = Path(__file__).resolve().parent / "share" / "jupyter"


def voila_options() -> list[str]:
    """Command-line options for the culling and the offline template."""
    return [f"--MappingKernelManager.cull_idle_timeout={CULL_IDLE_TIMEOUT}",
            f"--MappingKernelManager.cull_interval={CULL_INTERVAL}",
            "--MappingKernelManager.cull_connected=False",
            f"--template={TEMPLATE}"]


def jupyter_path_env(environ: dict[str, str] | None = None) -> str:
    """``JUPYTER_PATH`` with this package's share/jupyter first (where the template lives)."""
    environ = os.environ if environ is None else environ
    rest = environ.get("JUPYTER_PATH", "")
    return os.pathsep.join([str(SHARE), *([rest] if rest else [])])


def patch_shutdown_handler() -> None:
    """Let the page's shutdown-on-unload request through when it comes from this origin."""
    from tornado import web
    from voila.shutdown_kernel_handler import VoilaShutdownKernelHandler

    def check_xsrf_cookie(self) -> None:  # noqa: ANN001 - tornado handler method
        if not self.check_origin():
            raise web.HTTPError(403, "cross-origin kernel shutdown refused")

    VoilaShutdownKernelHandler.check_xsrf_cookie = check_xsrf_cookie


def main(argv: list[str] | None = None) -> int:
    os.environ["JUPYTER_PATH"] = jupyter_path_env()
    patch_shutdown_handler()
    from voila.app import main as voila_main

    sys.argv = ["voila", *(sys.argv[1:] if argv is None else argv)]
    return int(voila_main() or 0)


if __name__ == "__main__":
    sys.exit(main())
