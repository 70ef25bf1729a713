"""``avit demo``'s output for a newcomer: the compact table fits 80 columns, the knob stays in its range,
and the last line names the speedups at the agreement bounds and the defaults' figures."""

from __future__ import annotations

import io
import math

from rich.console import Console

from avit.demo import demo_settings, summary_line
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


def test_summary_line_names_the_bounds_and_the_defaults():
    line = summary_line(ROWS)
    assert "≥99.5 %: 1.04× (1.06×)" in line and "≥99 %: 1.13× (1.15×)" in line
    assert "defaults 1.04× at 99.61 %" in line and len(line) <= 80
    assert "none" in summary_line([_row("default", 0.6, 500, 1.5, 0.9)])


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
