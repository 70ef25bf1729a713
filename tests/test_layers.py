"""The import contracts of pyproject.toml ([tool.importlinter]): layers top to bottom, a torch-free runtime,
and calibration / profiling / exporter independent of each other. A new upward import fails here with its path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports() -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.skip("import-linter is not installed: pip install -e '.[dev]'")
    return subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    proc = lint_imports()
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """The contract can fail: a copy of the tree where the runtime imports the exporter is rejected."""
    lint_imports()  # skips when import-linter is missing
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "avit", src / "avit", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "avit" / "runtime" / "upward.py").write_text("from avit.exporter import pipeline  # noqa: F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(src)})
    assert proc.returncode != 0
    assert "avit.runtime.upward -> avit.exporter.pipeline" in proc.stdout
