"""The import-linter contracts of pyproject.toml hold (models/ has no cycle, nothing imports upward)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter not installed")
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "broken" in out.stdout and " 0 broken" in out.stdout


def test_no_dead_code():
    exe = shutil.which("vulture") or str(Path(sys.executable).with_name("vulture"))
    if not Path(exe).exists():
        pytest.skip("vulture not installed")
    out = subprocess.run([exe, "imgsim_lab", "scripts", "tests", "vulture_allowlist.py",
                          "--min-confidence", "60"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
