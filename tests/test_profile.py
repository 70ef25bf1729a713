"""Profiling: latency statistics, the interleaved profile on the real backend, per-stage times, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import onnx
import pytest

from avit.errors import InputError
from avit.evaluation.latency import latency_stats
from avit.profiling.ort_profiler import node_stages, stage_names, stage_order, stage_times
from avit.profiling.plot import plot_profile
from avit.profiling.profile import profile
from avit.runtime import AdaptiveSession
from tiny_onnx import photo_dir, tiny_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return photo_dir(tmp_path_factory.mktemp("prof"), n=5, seed=3)


def test_latency_stats_exactly():
    s = latency_stats([float(v) for v in range(1, 11)], extra=[75])
    assert s == pytest.approx({"mean": 5.5, "p50": 5.5, "p75": 7.75, "p90": 9.1, "p95": 9.55, "p99": 9.91, "n": 10})
    with pytest.raises(ValueError):
        latency_stats([])


def test_stage_names_and_every_node_has_a_stage(model):
    info = AdaptiveSession(model, calibration=False).info
    names = stage_names(info)
    assert names == ["embed", "block 1", "pause 1", "blocks 2-3", "pause 2", "block 4", "reassembly", "decoder"]
    stages = node_stages(model, info)
    graph = onnx.load(str(model), load_external_data=False).graph
    assert set(stages) == {n.name for n in graph.node} and set(stages.values()) <= set(names)
    by_op = {n.op_type: stages[n.name] for n in graph.node}
    assert by_op["Conv"] in ("embed", "decoder") and by_op["AvitTokenScatter"] == "reassembly"
    assert by_op["Resize"] == "decoder" and stages["node_layer_norm"] == "block 1"


def test_stage_times_attribute_fused_and_inlined_kernels():
    nodes = {"node_conv2d": "embed", "node_matmul": "block 1", "node_head": "pause 1", "node_up": "decoder"}
    ev = lambda name, ts, dur: {"cat": "Node", "name": name + "_kernel_time", "ts": ts, "dur": dur}  # noqa: E731
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100_000},
        ev("conv2d_nchwc", 10, 1000),  # layout-transformed conv -> node_conv2d
        ev("ReorderOutput", 20, 500),  # runtime-made kernel: inherits "embed"
        ev("node_matmul/MatMulScaleFusion/", 30, 20_000),  # fused -> node_matmul
        ev("node_head", 40, 3000),
        ev("_inlfunc_AvitEntropySelect_n1", 50, 400),  # inlined avit op after the head -> pause 1
        ev("_inlfunc_AvitTokenScatter_n26", 60, 600),
        ev("node_up", 70, 5000),
        {"cat": "Session", "name": "model_run", "ts": 200_000, "dur": 10_000},
        ev("node_up", 200_010, 2000),
    ]
    first, second = stage_times(events, nodes)
    assert first == pytest.approx({"embed": 1.5, "block 1": 20.0, "pause 1": 3.4, "reassembly": 0.6, "decoder": 5.0,
                                   "other (runtime)": 100.0 - 30.5})
    assert second == pytest.approx({"decoder": 2.0, "other (runtime)": 8.0})


def test_stage_order_puts_a_static_models_blocks_before_the_decoder():
    static = {"embed": 1, "blocks 1-12": 9, "decoder": 2, "other (runtime)": 0}
    adaptive = {"embed": 1, "blocks 1-4": 3, "pause 1": 0, "blocks 5-12": 4, "reassembly": 0, "decoder": 2, "other (runtime)": 0}
    assert stage_order([static, adaptive]) == [
        "embed", "blocks 1-4", "pause 1", "blocks 5-12", "reassembly", "blocks 1-12", "decoder", "other (runtime)"
    ]


def test_profile_on_the_real_backend(model, photos, tmp_path):
    report = profile(model, sorted(photos.glob("*.png")), batches=[2, 1], iters=2, warmup=0, calibration=False,
                     settings=[("mid", [0.5, 0.6]), ("nothing again", [0, 0])])
    rows = report.rows
    assert report.rounds == {1: 2, 2: 2} and "nothing-paused thresholds" in report.reference
    assert [(r.batch, r.label) for r in rows] == [(1, "nothing paused"), (1, "mid"), (2, "nothing paused"), (2, "mid")]
    ref, mid = rows[2], rows[3]
    assert ref.reference and ref.iou == 1.0 and ref.tokens_kept == [24.0, 24.0]
    assert ref.latency_ms["n"] == 2 * 3  # 5 images in 3 batches of 2, 2 rounds
    assert mid.tokens_kept[1] < 24 and mid.gmac_executed >= mid.gmac_ideal and mid.gmac_executed < ref.gmac_executed
    assert mid.throughput == pytest.approx(2e3 / mid.latency_ms["mean"])
    assert set(ref.stages_ms) >= {"embed", "block 1", "pause 1", "decoder", "other (runtime)"}
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    png = plot_profile(data, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_profile_argument_errors(model, photos):
    paths = sorted(photos.glob("*.png"))
    with pytest.raises(InputError, match="--rounds or --duration-s"):
        profile(model, paths, iters=None, duration=None)
    with pytest.raises(InputError, match="has pause points"):
        profile(model, paths, static=model, iters=1)
    with pytest.raises(InputError, match="expected 2 pause thresholds"):
        profile(model, paths, settings=[("bad", [0.1])], iters=1)


def avit(*args):
    return subprocess.run([sys.executable, "-m", "avit.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_profile_json_and_plot(model, photos, tmp_path):
    proc = avit("profile", model, "--images", photos, "--batch-sizes", "1,2", "--rounds", "1", "--warmup", "0",
                "--thresholds", "0.5,0.6", "--no-stages", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["format"] == "avit-profile" and len(data["rows"]) == 4 and data["rows"][1]["thresholds"] == [0.5, 0.6]
    proc = avit("profile", model, "--images", photos, "--rounds", "1", "--json", tmp_path / "p.json", "--plot", tmp_path / "p.png")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())  # footnotes wrap at the terminal's width
    assert "time per stage" in text and "p95" in text and "nothing-paused thresholds" in text
    assert json.loads((tmp_path / "p.json").read_text())["rows"][0]["stages_ms"]["embed"] > 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def _profile_at(columns, *args):
    env = {**os.environ, "COLUMNS": str(columns)}
    proc = subprocess.run([sys.executable, "-m", "avit.cli", "profile", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_cli_profile_tables_fit_80_columns_and_say_how_many_calls(model, photos):
    n = len(list(photos.glob("*.png")))
    out = _profile_at(80, model, "--images", photos, "--rounds", "1", "--warmup", "0", "--thresholds", "0.25,0.275")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out, out
    header = next(line for line in lines if line.lstrip().startswith("setting"))
    assert header.split() == ["setting", "thresholds", "tokens", "mean", "p50", "p95", "p99", "img/s", "speedup", "IoU"]
    text = " ".join(out.split())  # titles and footnotes wrap at 80 columns
    assert f"{n} calls per setting" in text and f"p99 of {n} calls lies between the two slowest" in text
    stage_header = next(line for line in lines if line.lstrip().startswith("stage"))
    assert "thresholds" in out and "time per stage, batch 1" in out and "(ref)" in out + stage_header
    wide = _profile_at(200, model, "--images", photos, "--rounds", "1", "--warmup", "0", "--thresholds", "0.25,0.275",
                       "--no-stages")
    assert "p90" in wide and "GMAC/img exec|ideal" in wide
    one = _profile_at(80, model, "--images", sorted(photos.glob("*.png"))[0], "--rounds", "1", "--warmup", "0",
                      "--thresholds", "0.25,0.275", "--no-stages")
    header = next(line for line in one.splitlines() if line.lstrip().startswith("setting"))
    assert "1 call per setting" in " ".join(one.split()) and "ms" in header.split() and not {"p50", "p99", "mean"} & set(header.split())


def test_cli_profile_one_line_errors(model, photos, tmp_path):
    for args, pattern, code in [
        ((model, "--images", photos, "--batch-sizes", "a"), "not a comma-separated list of integers", 1),
        ((model, "--images", photos, "--thresholds", "0.1"), "expected 2 pause thresholds", 1),
        ((model, "--images", tmp_path / "none"), "images not found", 1),
        ((tmp_path / "missing.onnx", "--images", photos), "model not found", 1),
        ((model, "--rounds", "0"), "Invalid value for '--rounds'", 2),
    ]:
        proc = avit("profile", *args)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == code and len(lines) == 1 and pattern in lines[0], (args, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout
