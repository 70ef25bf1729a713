"""The ``avit`` command line as a user runs it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from avit.models import save_checkpoint
from conftest import tiny_model

AVIT = [sys.executable, "-m", "avit.cli"]


def avit(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*AVIT, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, pattern: str, code: int = 1) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and pattern in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = save_checkpoint(tiny_model(default_thresholds=(0.4, 0.5)), root / "tiny.ckpt", origin="test")
    photo = root / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(photo)
    return root, ckpt, photo


@pytest.fixture(scope="module")
def exported(artifacts):
    root, ckpt, _ = artifacts
    proc = avit("export", ckpt, "-o", root / "tiny.onnx")
    assert proc.returncode == 0, proc.stderr
    assert "parity" in proc.stdout and "wrote" in proc.stdout
    return root / "tiny.onnx"


def test_export_run_inspect(artifacts, exported, tmp_path):
    _, ckpt, photo = artifacts
    proc = avit("run", exported, photo, photo, "--thresholds", "0.3,0.6", "--output-dir", tmp_path / "out", "--batch", "2")
    assert proc.returncode == 0, proc.stderr
    assert "photo.png" in proc.stdout and "/ 24" in proc.stdout
    mask = Image.open(tmp_path / "out" / "photo.mask.png")
    assert mask.size == (70, 50)  # back at the photo's own size
    assert Image.open(tmp_path / "out" / "photo.overlay.png").mode == "RGB"
    for target, expect in ((exported, "AvitEntropySelect"), (ckpt, "pause_points")):
        proc = avit("inspect", target)
        assert proc.returncode == 0 and expect in proc.stdout, proc.stderr


def test_run_old_output_spelling_and_readable_outputs(artifacts, exported, tmp_path):
    """``avit run -o DIR`` (the old spelling of ``--output-dir``) still works; the masks are
    readable by others under the usual umask (not owner-only)."""
    import os
    import stat

    _, _, photo = artifacts
    mask = os.umask(0o022)
    os.umask(mask)
    proc = avit("run", exported, photo, "--thresholds", "0.3,0.6", "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    for name in ("photo.mask.png", "photo.overlay.png"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE(exported.stat().st_mode) == 0o666 & ~mask


def test_export_static(artifacts, tmp_path):
    _, ckpt, _ = artifacts
    proc = avit("export", ckpt, "--static", "-o", tmp_path / "s.onnx")
    assert proc.returncode == 0, proc.stderr
    assert "adaptive ops: none" in proc.stdout


def test_export_trt_without_tensorrt_keeps_onnx(artifacts, tmp_path):
    _, ckpt, _ = artifacts
    out = tmp_path / "t.onnx"
    proc = avit("export", ckpt, "-o", out, "--trt", "--no-check")
    assert_one_line_error(proc, "TensorRT is not installed")
    assert "the ONNX model is ready" in proc.stderr and out.is_file()


def test_bad_path(tmp_path, artifacts):
    _, _, photo = artifacts
    assert_one_line_error(avit("export", tmp_path / "missing.ckpt"), "checkpoint not found")
    assert_one_line_error(avit("run", tmp_path / "missing.onnx", photo), "model not found")
    assert_one_line_error(avit("inspect", tmp_path / "missing.onnx"), "file not found")


def test_corrupt_checkpoint(artifacts, tmp_path):
    _, ckpt, _ = artifacts
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(ckpt.read_bytes()[:5000])
    assert_one_line_error(avit("export", bad, "-o", tmp_path / "bad.onnx"), "corrupt or truncated")
    assert not (tmp_path / "bad.onnx").exists()
    assert_one_line_error(avit("inspect", bad), "corrupt or truncated")


@pytest.mark.parametrize(
    "thresholds,pattern",
    [("0.1,nan", "must not be NaN"), ("0.1", "expected 2 pause thresholds"), ("0.1,0.2,0.3", "expected 2"), ("a,b", "not a comma-separated list")],
)
def test_bad_thresholds(exported, artifacts, thresholds, pattern, tmp_path):
    _, _, photo = artifacts
    proc = avit("run", exported, photo, "--thresholds", thresholds, "--output-dir", tmp_path / "out")
    assert_one_line_error(proc, pattern)
    assert not (tmp_path / "out").exists()


def test_bad_images(exported, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    assert_one_line_error(avit("run", exported, text), "cannot read image")


def test_usage_errors_are_one_line(exported):
    assert_one_line_error(avit("run"), "Missing argument", code=2)
    assert_one_line_error(avit("run", exported, "--bogus"), "No such option", code=2)
    assert_one_line_error(avit("adapt", "-o", "x.ckpt", "--from", "timm"), "unknown source")


def test_console_script_installed():
    exe = shutil.which("avit")
    assert exe, "the avit console script is not installed"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("avit ")
