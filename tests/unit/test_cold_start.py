"""Cold start: `imgsim --help` imports no subcommand; the search path never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from imgsim_lab.cli import build_parser, declared


def _run(code: str) -> dict:
    env = {**os.environ, "TORCH_HOME": "/nonexistent"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_imports_no_subcommand_module():
    code = ("import sys, json, contextlib, io\n"
            "from imgsim_lab.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as buf:\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "mods = sorted(m for m in sys.modules if m.startswith('imgsim_lab.cli.') or m in "
            "('numpy', 'torch', 'PIL', 'faiss'))\n"
            "print(json.dumps({'mods': mods, 'help': buf.getvalue()}))")
    r = _run(code)
    assert r["mods"] == []
    for _, name, text in declared(__import__("imgsim_lab.cli").cli.__path__):
        assert name in r["help"] and text.split()[0] in r["help"]


def test_declared_names_match_the_modules():
    import importlib

    import imgsim_lab.cli as cli

    for mod, name, text in declared(cli.__path__):
        m = importlib.import_module(f"imgsim_lab.cli.{mod}")
        assert (name, text) == (m.NAME, m.HELP)


def test_a_subcommand_still_gets_its_arguments():
    args = build_parser(["info", "--json"]).parse_args(["info", "--json"])
    assert args.command == "info" and args.json


def test_search_path_modules_do_not_import_torch():
    code = ("import sys, json\n"
            "import imgsim_lab.cli.search, imgsim_lab.search, imgsim_lab.models, imgsim_lab.pipeline\n"
            "from imgsim_lab.models import get_model\n"
            "get_model('efficientnet_lite0', size=64)  # built, not run: no export needed\n"
            "print(json.dumps({'torch': 'torch' in sys.modules}))")
    assert _run(code) == {"torch": False}
