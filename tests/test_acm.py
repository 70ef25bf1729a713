"""ACM: the score-select op, the learner-split MLP, the conversion of a trained MLP (acmize), MACs, and one
exported ACM model (parity, real gathers per learner level, tolerance semantics)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import avit.ops as ops
from avit.evaluation.knobs import KnobSpace
from avit.errors import ConfigError
from avit.exporter import export_onnx
from avit.metadata import ModelInfo
from avit.models import model_macs
from avit.adapt.acm import acmize
from avit.models.acm import AcmMlp
from avit.ops._registry import single_op_model
from avit.runtime import AdaptiveSession
from conftest import tiny_config, tiny_model

F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


# ---------------------------------------------------------------------------------------------- the op
def test_score_select_semantics_and_lowering():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.5], [0.2, 0.8, 0.3, 0.0]])
    idx, kept = ops.score_select(scores, torch.tensor([4, 3]), torch.tensor(0.5))
    assert idx.tolist() == [[0, 2, 3], [1, 0, 0]] and kept.tolist() == [3, 1]  # not below: 0.5 kept; padding never
    assert ops.score_select(scores, torch.tensor([4, 0]), torch.tensor(-math.inf))[1].tolist() == [4, 0]
    assert ops.score_select(scores, torch.tensor([4, 4]), torch.tensor(math.inf))[0].shape == (2, 0)
    model = single_op_model("AvitScoreSelect", {"scores": (F, 2), "counts": (I64, 1), "threshold": (F, 0)})
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(0)
    for b, n in [(1, 1), (3, 0), (0, 4), (2, 50), (4, 1025)]:
        s = torch.rand(b, n, generator=g).round(decimals=1)  # many exact ties with the thresholds
        counts = torch.randint(0, n + 1, (b,), generator=g)
        for t in (-math.inf, 0.0, 0.3, 1.0, math.inf):
            ref_idx, ref_kept = ops.score_select(s, counts, torch.tensor(t))
            got_idx, got_kept, size = session.run(None, {"scores": s.numpy(), "counts": counts.numpy(), "threshold": np.array(t, np.float32)})
            np.testing.assert_array_equal(got_idx, ref_idx.numpy())
            np.testing.assert_array_equal(got_kept, ref_kept.numpy())
            assert size == ref_idx.shape[1]
    torch.library.opcheck(
        torch.ops.avit.score_select.default, (torch.rand(2, 9), torch.tensor([9, 4]), torch.tensor(0.5)),
        test_utils=("test_schema", "test_faketensor"),
    )


# ---------------------------------------------------------------------------------------------- the module
def test_acm_mlp_levels():
    torch.manual_seed(0)
    mlp = AcmMlp(16, 64, learners=4, gate_hidden=8).eval()
    x = torch.randn(3, 10, 16)
    with torch.no_grad():
        dense = mlp(x)
        assert torch.allclose(sum(mlp.learner(j, x) for j in range(4)), dense, atol=1e-6)
        out, units = mlp.forward_adaptive(x, torch.tensor(0.0))
        torch.testing.assert_close(out, dense, atol=1e-6, rtol=0)
        assert units.tolist() == [40, 40, 40]
        out, units = mlp.forward_adaptive(x, torch.tensor(1.0))  # e_0 = 1 >= 1: learner 0 only
        torch.testing.assert_close(out, mlp.learner(0, x), atol=1e-6, rtol=0)
        assert units.tolist() == [10, 10, 10]
        out, units = mlp.forward_adaptive(x, torch.tensor(1.5))
        assert units.tolist() == [0, 0, 0] and not out.any()
        e = mlp.remaining_error(x)
        assert (e[..., 0] == 1).all() and (e[..., 1:] <= e[..., :-1]).all()
        t = float(e[..., 1:].median())
        out, units = mlp.forward_adaptive(x, torch.tensor(t))
        per_token = mlp.learners_per_token(x, t)
        assert units.tolist() == per_token.sum(1).tolist() and 10 < units.sum() < 120
        for b in range(3):  # every token got exactly the sum of its own learners
            for i in range(10):
                want = sum((mlp.learner(j, x[b, i]) for j in range(int(per_token[b, i]))), torch.zeros(16))
                torch.testing.assert_close(out[b, i], want, atol=1e-6, rtol=0)


def test_config_rules_and_knob_space():
    with pytest.raises(ConfigError, match="acm_learners must be >= 2"):
        tiny_config(policy="acm", acm_learners=1)
    with pytest.raises(ConfigError, match="multiple of acm_learners"):
        tiny_config(policy="acm", acm_learners=5)
    cfg = tiny_config(policy="acm", acm_learners=2)
    assert cfg.to_dict()["acm_learners"] == 2 and "dtop_k" not in cfg.to_dict()
    from avit.metadata import build_metadata

    props = build_metadata(cfg.to_dict(), avit_version="t", adaptive_ops=[], nothing_paused=0.0, everything_paused=math.inf, default_thresholds=[0.0, 0.0])
    assert KnobSpace.for_model(ModelInfo.from_props(props)).thresholds([0.25, 1.0]) == (0.25, 1.0)


def test_macs_follow_learner_evaluations():
    cfg = tiny_config(policy="acm", pause_points=(1, 3))  # ACM blocks 1, 2 | 3; 25 tokens, 4 learners of 32 units
    full = model_macs(cfg)
    static = model_macs(cfg.replace(pause_points=()))
    gate = 25 * (32 * 64 + 64 * 3)
    assert full["total"] == static["total"] + 3 * gate
    assert model_macs(cfg, [200, 100])["total"] == full["total"]
    assert full["total"] - model_macs(cfg, [100, 100])["total"] == 100 * 2 * 32 * 32
    assert model_macs(cfg, [0, 0])["blocks"] == static["blocks"] - 3 * 25 * 2 * 32 * 128 + 3 * gate
    with pytest.raises(ValueError):
        model_macs(cfg, [201, 0])


# ---------------------------------------------------------------------------------------------- conversion
@pytest.fixture(scope="module")
def converted():
    source = tiny_model(num_classes=3)
    images = torch.randn(6, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    acm, report = acmize(source, images, learners=4, pause_points=(1, 3), gate_hidden=16, steps=150)
    return source, acm, report, images


def test_acmize_is_exact_at_zero_tolerance(converted, images):
    source, acm, report, _ = converted
    assert acm.config.policy == "acm" and len(acm.pause_heads) == 0
    assert [r.block for r in report.blocks] == [1, 2, 3]
    with torch.no_grad():
        ref, _ = source.static_copy()(images)
        logits, units = acm(images, torch.tensor([0.0, 0.0]))
        static_acm, _ = acm.static_copy()(images)
    torch.testing.assert_close(logits, ref, atol=2e-5, rtol=0)  # learners reorder hidden units: same MLP
    torch.testing.assert_close(static_acm, ref, atol=2e-5, rtol=0)
    assert units.tolist() == [[200, 100]] * 3


def test_acmize_orders_learners_and_fits_gates(converted, images):
    _, acm, report, _ = converted
    for r in report.blocks:
        assert r.relative_error[0] == pytest.approx(1.0) and r.relative_error[-1] < 1e-8
        assert r.relative_error[1] < 0.75  # the most important quarter of the units carries most of the output
        assert r.gate_loss_after < r.gate_loss_before
    previous = None
    with torch.no_grad():
        for t in (0.0, 0.05, 0.2, 0.5, 1.0, 2.0):
            _, units = acm(images, torch.tensor([t, t]))
            if previous is not None:
                assert (units <= previous).all()
            previous = units
    assert previous.sum() == 0


def test_batch_equals_single_images(converted, images):
    from avit.exporter.parity import probe_acm_thresholds

    _, acm, _, _ = converted
    t = probe_acm_thresholds(acm, images, [0.5, 0.5])
    with torch.no_grad():
        logits, units = acm(images, t)
        for i in range(3):
            one_logits, one_units = acm(images[i : i + 1], t)
            assert one_units.tolist() == units[i : i + 1].tolist()
            torch.testing.assert_close(one_logits, logits[i : i + 1], atol=1e-5, rtol=0)
    assert len({tuple(u) for u in units.tolist()}) > 1, "images should run different numbers of learners"


# ---------------------------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory):
    _, acm, _, _ = converted
    return export_onnx(acm, tmp_path_factory.mktemp("acm") / "acm.onnx")


def test_export_parity_and_real_gathers(converted, exported):
    _, acm, _, images = converted
    report = exported
    assert report.parity and all(r.ok for r in report.parity)
    assert {r.label for r in report.parity} >= {"nothing paused", "everything paused", "middle", "deep"}
    middle = [r for r in report.parity if r.label == "middle" and r.batch == 3][0]
    assert 0 < np.sum(middle.tokens_kept) < 3 * 300
    proto = onnx.load(str(report.path))
    ops_in_graph = [n.op_type for n in proto.graph.node if n.domain == "avit"]
    assert ops_in_graph.count("AvitScoreSelect") == 3 * 4  # one selection per ACM block and learner level
    assert ops_in_graph.count("AvitTokenGather") == 2 * 3 * 4 and ops_in_graph.count("AvitTokenScatter") == 3 * 4
    assert [i.name for i in proto.graph.input] == ["images", "pause_thresholds"]
    session = AdaptiveSession(report.path)
    assert session.info.policy == "acm" and "learner" in session.info.threshold_kind
    x = images[:2].numpy()
    for t in ([0.0, 0.0], [0.1, 0.4], [1.0, math.inf], [math.inf, 0.0]):
        got = session.run(x, t)
        with torch.no_grad():
            ref_logits, ref_units = acm(torch.from_numpy(x), torch.tensor(t))
        np.testing.assert_array_equal(got.tokens_kept, ref_units.numpy())
        np.testing.assert_allclose(got.logits, ref_logits.numpy(), atol=1e-4, rtol=0)
    assert session.run(x, [1.0, math.inf]).tokens_kept.tolist() == [[50, 0], [50, 0]]  # learner 0 only, then none


def test_profile_and_calibrate_work_unchanged(exported, tmp_path):
    """`avit profile` and `avit calibrate` on an ACM export: the tolerance is the knob they turn."""
    from avit.calibration.calibrate import calibrate
    from avit.profiling.profile import profile
    from tiny_onnx import photo_dir

    photos = sorted(photo_dir(tmp_path, n=4).iterdir())
    result = profile(exported.path, photos[:2], iters=1, warmup=0, stages=False, settings=[("t", [0.2, 0.5])])
    rows = {r.label: r for r in result.rows}
    assert set(rows) >= {"nothing paused", "t"}
    assert sum(rows["t"].tokens_kept) < sum(rows["nothing paused"].tokens_kept)  # learner evaluations drop
    report = calibrate(exported.path, 1e6, photos[:2], heldout=photos[2:], max_evals=6, repeats=1, final_rounds=1,
                       output=tmp_path / "acm.calib.json")
    assert report.meets_target and report.path.is_file()
    # any setting meets a 1e6 ms target: the best quality is running every learner (ACM at tolerance 0 = the MLP)
    assert report.chosen.quality >= 0.999 and all(t >= 0 for t in report.chosen.thresholds)


def test_acmize_cli(tmp_path):
    """``avit acmize`` on a checkpoint: the ACM segments start where --pause-points says, the learners are
    exact at tolerance 0, and bad input is one line."""
    import subprocess
    import sys

    from avit.models import load_checkpoint, save_checkpoint
    from tiny_onnx import photo_dir

    source = tiny_model(num_classes=3)
    ckpt = save_checkpoint(source, tmp_path / "m.ckpt")
    cli = [sys.executable, "-m", "avit.cli", "acmize", str(ckpt), "-o", str(tmp_path / "acm.ckpt")]
    proc = subprocess.run([*cli, "--pause-points", "2", "--images", str(photo_dir(tmp_path / "photos")),
                           "--gate-steps", "5", "--learners", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    acm, meta = load_checkpoint(tmp_path / "acm.ckpt")
    assert acm.config.policy == "acm" and tuple(acm.config.pause_points) == (2,) and acm.config.acm_learners == 2
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = source.forward_full(x).logits
        got, _ = acm(x, torch.zeros(1))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    bad = subprocess.run([*cli, "--pause-points", "two"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "error:" in bad.stderr
