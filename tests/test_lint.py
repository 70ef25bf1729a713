"""ruff (configured in pyproject.toml: [tool.ruff]) finds nothing in the repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    probe = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("ruff is not installed: pip install -e '.[dev]'")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "--no-cache", "."],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, f"ruff check found:\n{proc.stdout}{proc.stderr}"


def test_ruff_config_is_read():
    """The configured rules are the ones run: a file with an unused import (F401) and a loop-variable
    closure (B023) fails under the repository's configuration."""
    probe = subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("ruff is not installed: pip install -e '.[dev]'")
    bad = "import os\n\nfns = []\nfor i in range(3):\n    fns.append(lambda: i)\n"
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "--no-cache",
                           "--config", str(REPO / "pyproject.toml"), "--stdin-filename", "probe.py", "-"],
                          input=bad, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1 and "F401" in proc.stdout and "B023" in proc.stdout, proc.stdout + proc.stderr
