"""int8 dynamic quantization of an exported model: only the backbone's linear layers change, the
thresholds input stays live, outputs stay close to fp32, one-line errors, ``avit quantize``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest

from avit.errors import ArtifactError, InputError
from avit.exporter import export_onnx
from avit.exporter.quantize import quantize_onnx
from avit.runtime import AdaptiveSession
from conftest import tiny_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    fp32 = export_onnx(tiny_model(pause_points=(1, 3)), root / "m.onnx", check=False).path
    return fp32, quantize_onnx(fp32, root / "m.int8.onnx")


def test_only_backbone_linear_layers_are_quantized(exported):
    fp32, int8 = exported
    q = onnx.load(str(int8))
    assert sum(n.op_type == "MatMulInteger" for n in q.graph.node) == 4 * 4  # depth 4 × (qkv, proj, fc1, fc2)
    avit_nodes = lambda m: sorted(n.op_type for n in m.graph.node if n.domain == "avit")  # noqa: E731
    assert avit_nodes(q) == avit_nodes(onnx.load(str(fp32))) and avit_nodes(q)
    for node in q.graph.node:  # token heads and attention's activation products stay fp32
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        if "pause_heads" in scopes:
            assert node.op_type not in ("MatMulInteger", "DynamicQuantizeLinear"), node.name
    assert [i.name for i in q.graph.input] == ["images", "pause_thresholds"]
    assert AdaptiveSession(int8).info.pause_points == AdaptiveSession(fp32).info.pause_points


def test_thresholds_stay_live_and_outputs_stay_close(exported, images):
    fp32, int8 = (AdaptiveSession(p) for p in exported)
    x = images.numpy()
    kept = {tuple(int8.run(x, t).tokens_kept.ravel()) for t in ([0.0, 0.0], [0.5, 0.6], [np.inf, np.inf])}
    assert len(kept) == 3  # different thresholds → different token counts through the int8 graph
    a, b = fp32.run(x, [0.0, 0.0]), int8.run(x, [0.0, 0.0])
    scale = float(np.abs(a.logits).max())
    assert 0 < float(np.abs(a.logits - b.logits).max()) < 0.1 * scale  # quantized, and close


def test_errors_and_cli(exported, tmp_path):
    fp32, int8 = exported
    with pytest.raises(ArtifactError, match="already quantized"):
        quantize_onnx(int8, tmp_path / "x.onnx")
    with pytest.raises(InputError, match="mode 'static' is not supported"):
        quantize_onnx(fp32, tmp_path / "x.onnx", mode="static")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ArtifactError, match="not an ONNX model"):
        quantize_onnx(tmp_path / "junk.onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    cli = [sys.executable, "-m", "avit.cli.main", "quantize"]
    ok = subprocess.run([*cli, str(fp32), "-o", str(tmp_path / "c.onnx")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and (tmp_path / "c.onnx").is_file(), ok.stderr
    bad = subprocess.run([*cli, str(tmp_path / "junk.onnx")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "not an ONNX model" in bad.stderr
