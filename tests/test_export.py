"""Export → ONNX Runtime parity over several configs, metadata, live threshold input, atomic writes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from avit.errors import ExportError
from avit.exporter import check_parity, export_onnx
from avit.metadata import ModelInfo
from avit.models import nothing_paused
from avit.runtime import AdaptiveSession
from conftest import bright_dark_model, tiny_config, tiny_model

CONFIGS = {
    "entropy-linear-predict": dict(policy="entropy", fill="predict"),
    "confidence-upconv-canvas-regs": dict(
        policy="confidence", fill="canvas", decoder="upconv", decoder_channels=(8, 4), pause_points=(2,), depth=3,
        patch_size=8, img_size=(32, 48), reg_tokens=2,
    ),
    "keepratio-3points-noncls": dict(
        policy="keep_ratio", fill="stale", pause_points=(1, 2, 3), depth=5, img_size=(96, 64), class_token=False,
    ),
    "entropy-patch14-3points": dict(
        policy="entropy", fill="predict", patch_size=14, img_size=(56, 84), pause_points=(1, 2, 4), depth=6,
        decoder="upconv", decoder_channels=(8,), reg_tokens=1, num_classes=1,
    ),
    "static": dict(pause_points=()),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def exported(request, tmp_path_factory):
    model = tiny_model(tiny_config(**CONFIGS[request.param]))
    path = tmp_path_factory.mktemp("export") / f"{request.param}.onnx"
    report = export_onnx(model, path)
    return request.param, model, report


def test_export_parity_and_metadata(exported):
    name, model, report = exported
    cfg = model.config
    assert report.path.is_file() and report.parity and all(r.ok for r in report.parity)
    assert {r.batch for r in report.parity} == {1, 3}
    assert max(r.max_abs_diff for r in report.parity) < 1e-4
    proto = onnx.load(str(report.path))
    info = ModelInfo.from_props({p.key: p.value for p in proto.metadata_props})
    assert info.pause_points == cfg.pause_points and info.policy == cfg.policy
    assert info.config == cfg.to_dict() and info.input_size == cfg.img_size
    avit_nodes = [n.op_type for n in proto.graph.node if n.domain == "avit"]
    if cfg.pause_points:
        select = "AvitKeepRatioSelect" if cfg.policy == "keep_ratio" else "AvitEntropySelect"
        assert avit_nodes.count(select) == len(cfg.pause_points)
        assert avit_nodes.count("AvitTokenGather") == len(cfg.pause_points)
        assert {f.name for f in proto.functions} >= set(avit_nodes)
        assert [i.name for i in proto.graph.input] == ["images", "pause_thresholds"]
        # the middle settings really paused tokens in some images (the threshold input is live)
        middle = [r for r in report.parity if r.label == "middle"][0]
        assert 0 < np.sum(middle.tokens_kept) < cfg.num_patches * len(cfg.pause_points) * middle.batch
    else:
        assert avit_nodes == [] and [i.name for i in proto.graph.input] == ["images"]


def test_inlined_graph_passes_strict_shape_inference(exported):
    """The lowerings declare no types of their own: after inlining, ONNX shape inference (which graph
    optimizers such as onnxscript's trust) must agree with every shape the exporter recorded. A plain
    ``FLOAT`` annotation used to declare the functions' tensors rank 0, which made that fail."""
    import onnx_ir as ir
    from onnx_ir.passes.common import InlinePass

    _, _, report = exported
    model = ir.load(str(report.path))
    InlinePass()(model)
    onnx.shape_inference.infer_shapes(ir.to_proto(model), strict_mode=True, data_prop=True)


def test_batch_two_and_unseen_thresholds(exported):
    name, model, report = exported
    cfg = model.config
    session = AdaptiveSession(report.path)
    x = torch.randn(2, cfg.in_chans, *cfg.img_size, generator=torch.Generator().manual_seed(7))
    values = [None] if not cfg.pause_points else [[0.33] * len(cfg.pause_points), [0.7] * len(cfg.pause_points)]
    for t in values:
        with torch.no_grad():
            ref_logits, ref_kept = model(x, None if t is None else torch.tensor(t))
        got = session.run(x.numpy(), t)
        np.testing.assert_array_equal(got.tokens_kept, ref_kept.numpy())
        np.testing.assert_allclose(got.logits, ref_logits.numpy(), atol=1e-4, rtol=0)


def test_one_image_empty_one_full_in_onnx(tmp_path):
    model, imgs = bright_dark_model()
    report = export_onnx(model, tmp_path / "bd.onnx")
    got = AdaptiveSession(report.path).run(imgs.numpy(), [0.3, 0.0])
    with torch.no_grad():
        ref_logits, ref_kept = model(imgs, torch.tensor([0.3, 0.0]))
    assert got.tokens_kept.tolist() == [[0, 0], [24, 24]] == ref_kept.tolist()
    np.testing.assert_allclose(got.logits, ref_logits.numpy(), atol=1e-4, rtol=0)


def test_parity_check_catches_a_wrong_graph(tmp_path):
    model = tiny_model()
    report = export_onnx(model, tmp_path / "m.onnx", check=False)
    assert report.parity == []
    with torch.no_grad():
        model.blocks[2].mlp.fc2.weight.mul_(1.05)  # the eager model now differs from the file
    with pytest.raises(ExportError, match="parity check failed"):
        check_parity(model, str(report.path))


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    import avit.exporter.onnx_export as onnx_export

    def failing_check(*args, **kwargs):
        raise ExportError("parity check failed (simulated)")

    monkeypatch.setattr(onnx_export, "check_parity", failing_check)
    with pytest.raises(ExportError, match="simulated"):
        export_onnx(tiny_model(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_static_copy_matches_adaptive_at_nothing_paused(tmp_path):
    model = tiny_model()
    a = AdaptiveSession(export_onnx(model, tmp_path / "a.onnx", check=False).path)
    s = AdaptiveSession(export_onnx(model.static_copy(), tmp_path / "s.onnx", check=False).path)
    x = torch.randn(2, 3, 64, 96).numpy()
    ra, rs = a.run(x, nothing_paused(model.config).tolist()), s.run(x)
    np.testing.assert_allclose(ra.logits, rs.logits, atol=1e-5, rtol=0)
    assert rs.tokens_kept.shape == (2, 0)
