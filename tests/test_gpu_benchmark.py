"""benchmarks/gpu.py, the prepared GPU run, rehearsed on the CPU (``--device cpu --quick``): it runs end to end
and writes the JSON the GPU run will write, with values that follow from the model it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_benchmark_rehearses_on_the_cpu(tmp_path):
    import torch

    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        ["nice", "-n", "19", sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick", "-o", str(out)],
        capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["args"]["device"] == "cpu" and data["args"]["batches"] == [1, 4]
    assert data["environment"]["device"].startswith("CPU: ")
    kernels = data["kernel_tests"]
    if not torch.cuda.is_available():  # the kernel tests skip themselves without a GPU, and the JSON says why
        assert kernels["status"] == "skipped" and kernels["counts"].get("skipped", 0) > 0 and kernels["skip_reasons"]
    n, points = data["model"]["num_patches"], len(data["model"]["pause_points"])
    rows = {(r["batch"], r["variant"]): r for r in data["rows"]}
    for b in (1, 4):
        static = rows[(b, "static, eager")]
        assert static["speedup_vs_static_eager"] == 1.0 and static["ms_per_call"] > 0
        nothing = rows[(b, "nothing paused, eager")]
        assert nothing["tokens_kept"] == [n] * points  # real token removal: every token kept
        assert nothing["agreement"] == 1.0 and nothing["max_abs_diff"] < 1e-3  # the static model's output
        everything = rows[(b, "everything paused, eager")]
        assert everything["tokens_kept"] == [0] * points
        middle = next(r for (bb, v), r in rows.items() if bb == b and v.startswith(("defaults", "keep")))
        assert 0 < middle["tokens_kept"][0] < n  # the middle setting really removes tokens
        assert abs(nothing["ms_per_image"] * b - nothing["ms_per_call"]) < 1e-9
    assert not any("CUDA graph" in v for _, v in rows)  # no graphs on the CPU
    assert "wrote" in proc.stdout and "nothing paused, eager" in proc.stdout
