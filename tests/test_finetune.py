"""Pause-aware fine-tuning (avit.adapt.finetune): real token removal in the loop on tiny models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from avit.adapt.finetune import (
    FinetuneSettings,
    build_finetune_cache,
    distillation_loss,
    finetune,
    finetune_checkpoint,
    forward_from_first_pause,
    knob_candidates,
    threshold_for_keep,
)
from avit.errors import CheckpointError, InputError
from avit.models import load_checkpoint, save_checkpoint
from conftest import tiny_model

SALIENCY = dict(num_classes=1, fill="predict", pause_points=(1, 3), policy="entropy")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list:
    """Four seeded synthetic 'photos' (a bright blob on a textured background), written as PNG."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        img = rng.integers(0, 90, (80, 120, 3)).astype(np.uint8)
        y, x = rng.integers(10, 40), rng.integers(10, 70)
        img[y : y + 30, x : x + 40] = rng.integers(150, 255, 3)
        paths.append(root / f"p{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def _fixed_loss(model, reference, cache, keep: float) -> float:
    """Distillation loss over every cached view at the threshold that keeps ``keep`` of the tokens."""
    c = model.config
    total = 0.0
    with torch.no_grad():
        for v in range(cache.num_views):
            x = cache.start_tokens[v : v + 1].float()
            value = threshold_for_keep(model, model.pause_heads[0](x[:, c.num_prefix_tokens :])[0], keep)
            out = forward_from_first_pause(model, x, torch.full((len(c.pause_points),), value))
            loss, _ = distillation_loss(
                model, out, cache.logits[v : v + 1], cache.final_norm[v : v + 1], cache.targets[v : v + 1], FinetuneSettings()
            )
            total += float(loss)
    return total / cache.num_views


def _paused_forward_by_hand(model, image: torch.Tensor, thresholds: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The entropy pause rule written out for ONE image ``[3, H, W]`` in plain torch (no avit ops, no
    padding, no key masks): at each pause point the tokens whose head entropy is below the threshold stop
    running, and their grid slot keeps the head's fill; the later blocks see only the tokens still running;
    the decoder sees the grid. Returns float ``[1, C, H, W]`` logits and the tokens kept per pause point."""
    c = model.config
    n = c.num_prefix_tokens
    x = model.embed(image[None])
    for block in model.blocks[: c.pause_points[0]]:
        x = block(x)
    bounds = (*c.pause_points, c.depth)
    pos, grid, kept = torch.arange(c.num_patches), None, []
    for p in range(len(c.pause_points)):
        prefix, tokens = x[:, :n], x[:, n:]
        head_logits, fill = model.pause_heads[p](tokens)
        grid = fill.clone() if grid is None else grid.index_copy(1, pos, fill)
        logp = head_logits[0].float().log_softmax(-1)
        running = -(logp.exp() * logp).sum(-1) >= thresholds[p]
        pos, x = pos[running], torch.cat([prefix, tokens[:, running]], dim=1)
        kept.append(int(running.sum()))
        for block in model.blocks[bounds[p] : bounds[p + 1]]:
            x = block(x)
    return model.decode(grid.index_copy(1, pos, x[:, n:])), kept


def test_partial_forward_equals_the_pause_rule_by_hand():
    """forward_from_first_pause (batched, padded, through the avit ops) against the rule written out per image."""
    model = tiny_model(**SALIENCY)
    images = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    thresholds = torch.tensor([0.03, 0.05])
    with torch.no_grad():
        x = model.embed(images)
        for block in model.blocks[: model.config.pause_points[0]]:
            x = block(x)
        out = forward_from_first_pause(model, x, thresholds)
        by_hand = [_paused_forward_by_hand(model, images[i], thresholds) for i in range(2)]
        logits, kept = model(images, thresholds)
    assert out.tokens_kept.tolist() == [k for _, k in by_hand] == kept.tolist()
    assert 0 < int(out.tokens_kept[:, 0].min()) and int(out.tokens_kept[:, 0].max()) < model.config.num_patches  # really paused
    assert out.tokens_kept[0, 0] != out.tokens_kept[1, 0]  # the images keep different counts: padding was used
    assert torch.allclose(out.logits, torch.cat([lg for lg, _ in by_hand]), atol=1e-5)
    assert torch.allclose(out.logits, logits, atol=1e-5)


def test_threshold_for_keep_keeps_that_fraction():
    model = tiny_model(**SALIENCY)
    head_logits = torch.randn(1, 24, 2, generator=torch.Generator().manual_seed(0)) * 3
    for keep in (0.25, 0.5, 0.75):
        value = threshold_for_keep(model, head_logits, keep)
        counts = torch.tensor([24])
        _, kept = torch.ops.avit.entropy_select(head_logits, counts, torch.tensor(value), 0)
        assert abs(int(kept[0]) - round(24 * keep)) <= 1
    assert threshold_for_keep(model, head_logits, 1.0) == model.config.nothing_paused_value


def test_finetune_lowers_distillation_loss_and_keeps_export_parity(photos, tmp_path):
    from avit.exporter import export_onnx

    model = tiny_model(**SALIENCY)
    reference = copy.deepcopy(model)
    settings = FinetuneSettings(steps=60, views=8, lr=2e-3, head_lr=2e-3, ramp=0.0, min_keep=0.3, seed=1,
                                train_blocks=True, train_heads=True, adapter_rank=0)
    cache = build_finetune_cache(reference, photos, 8, first_pause=1, seed=5)  # views the training never sees
    before = _fixed_loss(model, reference, cache, keep=0.5)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items()}
    report = finetune(model, photos, settings, reference=reference)
    after = _fixed_loss(model, reference, cache, keep=0.5)
    assert report.steps == 60 and report.trainable_parameters > 0
    assert after < 0.8 * before, (before, after)
    state = model.state_dict()
    # frozen: blocks before the first pause point, LayerScale, norms, the decoder; trained: later Linear layers
    for key in ("blocks.0.attn.qkv.weight", "blocks.2.ls1.gamma", "blocks.2.norm1.weight", "norm.weight",
                "decoder.head.weight", "pause_heads.0.fc.weight", "patch_embed.proj.weight"):
        assert torch.equal(state[key], frozen_before[key]), key
    for key in ("blocks.1.attn.qkv.weight", "blocks.3.mlp.fc2.weight", "pause_heads.0.feature.weight",
                "pause_heads.1.fc.weight"):
        assert not torch.equal(state[key], frozen_before[key]), key
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    report = export_onnx(model, tmp_path / "ft.onnx")
    assert report.parity and all(r.ok for r in report.parity)
    assert max(r.max_abs_diff for r in report.parity) < 1e-4


def test_pause_adapters_keep_nothing_paused_exact_and_export(photos, tmp_path):
    """The default recipe: zero-initialised, paused-fraction-gated adapters; blocks and heads frozen."""
    from avit.exporter import export_onnx

    model = tiny_model(**SALIENCY)
    reference = copy.deepcopy(model)
    cache = build_finetune_cache(reference, photos, 8, first_pause=1, seed=5)
    before = _fixed_loss(model, reference, cache, keep=0.5)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = FinetuneSettings(steps=60, views=8, adapter_rank=4, adapter_lr=1e-2, ramp=0.0, min_keep=0.3, seed=1)
    report = finetune(model, photos, settings, reference=reference)
    assert model.config.pause_adapter_rank == 4 and len(model.pause_adapters) == model.config.depth - 1
    assert report.trainable_parameters == sum(p.numel() for p in model.pause_adapters.parameters())
    assert _fixed_loss(model, reference, cache, keep=0.5) < 0.9 * before
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in frozen_before.items())  # only the adapters changed
    images = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        nothing = torch.zeros(2)
        assert torch.equal(model(images, nothing)[0], reference(images, nothing)[0])
        paused = torch.tensor([0.62, 0.62])
        assert not torch.allclose(model(images, paused)[0], reference(images, paused)[0])
    export = export_onnx(model, tmp_path / "adapters.onnx")
    assert export.parity and all(r.ok for r in export.parity)
    # MACs count the adapters: a paused setting costs a little more than without them
    from avit.models import model_macs

    assert model_macs(model.config, [10, 5])["total"] > model_macs(reference.config, [10, 5])["total"]
    assert model_macs(model.config)["total"] > model_macs(reference.config)["total"]


def test_finetune_checkpoint_writes_defaults_and_metadata(photos, tmp_path):
    src = save_checkpoint(tiny_model(**SALIENCY), tmp_path / "in.ckpt", origin="test")
    settings = FinetuneSettings(steps=8, views=4, lr=1e-3, seed=0, train_blocks=True)
    report = finetune_checkpoint(src, tmp_path / "out.ckpt", settings, photos=photos, target_agreement=0.9, progress=False)
    model, meta = load_checkpoint(tmp_path / "out.ckpt")
    assert meta["origin"] == "test" and meta["finetune"]["steps"] == 8
    assert tuple(model.config.default_thresholds) == report.default_thresholds
    assert meta["expected_agreement"] == pytest.approx(report.expected_agreement)
    assert meta["expected_agreement"] >= 0.9 or report.default_thresholds == (0.0, 0.0)
    # the chosen setting lies inside the knob's range (binary entropy ≤ ln 2)
    assert all(0.0 <= t <= np.log(2) for t in report.default_thresholds)
    # fine-tuning a fine-tuned checkpoint again needs the original as the reference
    with pytest.raises(InputError, match="fine-tuned blocks"):
        finetune_checkpoint(tmp_path / "out.ckpt", tmp_path / "again.ckpt", settings, photos=photos, progress=False)
    with pytest.raises(CheckpointError):
        finetune_checkpoint(tmp_path / "missing.ckpt", tmp_path / "x.ckpt", settings, photos=photos, progress=False)
    with pytest.raises(InputError, match="directory"):
        finetune_checkpoint(src, tmp_path, settings, photos=photos, progress=False)


# ---------------------------------------------------------------------------------------------- defaults
#: Made-up agreement of each photo with the original at candidate k: 1 - slope × (k + 1); photo 2 degrades fastest.
SLOPES = {0: 0.001, 1: 0.001, 2: 0.004, 3: 0.0015}
GRID = [(round(0.1 * (k + 1), 1),) * 2 for k in range(8)]  # 8 candidates, mildest first


@pytest.fixture
def made_up_agreements(monkeypatch):
    """Replace the model's candidates and agreements by :data:`SLOPES` (the rule is tested, not the model).

    Images are laid out as :func:`finetune_checkpoint` lays them out: 4 photos plain, then flipped, so
    image i belongs to photo ``i % 4``. Returns the groups and the settings evaluated."""
    import avit.adapt.finetune as ft

    groups = [i % 4 for i in range(8)]
    evaluated = []

    def agreement(model, images, reference_logits, thresholds):
        thresholds = tuple(float(v) for v in thresholds)
        evaluated.append(thresholds)
        k = GRID.index(thresholds) if thresholds in GRID else -1  # -1: nothing paused
        pixel = [1.0 if k < 0 else 1.0 - SLOPES[g] * (k + 1) for g in groups]
        return {"thresholds": list(thresholds), "pixel_agreement": pixel, "tokens_kept": [[24, 24]] * len(groups)}

    monkeypatch.setattr(ft, "knob_candidates", lambda model, images: list(GRID))
    monkeypatch.setattr(ft, "agreement_with_reference", agreement)
    return groups, evaluated


def test_defaults_are_chosen_by_the_worst_fold_of_photos_not_the_mean(made_up_agreements):
    """Known answers at target 0.9897: folds are photo index mod 3, so photo 2 (the worst) is a fold of
    its own and holds up to candidate 1 (1 - 0.004·2 = 0.992; at 2: 0.988). The mean over all 8 images
    holds up to candidate 4 (1 - 0.001875·5 = 0.990625), the mean of the three fold means and folds by image
    index (photo 2 shares a fold with photo 1) up to 3: each other rule is more aggressive."""
    from avit.adapt.finetune import choose_defaults_by_folds

    groups, _ = made_up_agreements
    model = tiny_model(**SALIENCY)
    chosen, expected, rows = choose_defaults_by_folds(model, None, None, groups, target=0.9897)
    assert chosen == GRID[1] and expected == pytest.approx(0.992)
    assert all(r["worst_fold"] == pytest.approx(1 - SLOPES[2] * (GRID.index(tuple(r["thresholds"])) + 1)) for r in rows)
    # the mean over all images (one fold) really chooses otherwise on these numbers
    mean_chosen, mean_expected, _ = choose_defaults_by_folds(model, None, None, groups, target=0.9897, folds=1)
    assert mean_chosen == GRID[4] and mean_expected == pytest.approx(1 - np.mean([SLOPES[g] for g in groups]) * 5)
    # folds follow the photo, not the image index: both views of photo 2 fall in one fold
    by_index, _, _ = choose_defaults_by_folds(model, None, None, list(range(8)), target=0.9897)
    assert by_index == GRID[3]


def test_defaults_are_nothing_paused_when_no_setting_passes(made_up_agreements):
    from avit.adapt.finetune import choose_defaults_by_folds

    groups, evaluated = made_up_agreements
    model = tiny_model(**SALIENCY)
    chosen, expected, rows = choose_defaults_by_folds(model, None, None, groups, target=0.9999)
    assert chosen == (model.config.nothing_paused_value,) * 2 == (0.0, 0.0) and expected == 1.0
    assert evaluated[-1] == (0.0, 0.0) and GRID[0] in evaluated  # the mildest candidate was tried and failed
    assert all(r["worst_fold"] < 0.9999 for r in rows)


@pytest.mark.parametrize("target", [99.5, 0.0, -0.1, 1.5, float("nan"), True])
def test_target_agreement_must_be_a_fraction(target, made_up_agreements):
    from avit.adapt.finetune import choose_defaults_by_folds

    groups, evaluated = made_up_agreements
    with pytest.raises(InputError, match=r"target agreement must be a fraction in \(0, 1\]") as info:
        choose_defaults_by_folds(tiny_model(**SALIENCY), None, None, groups, target=target)
    assert not evaluated and "\n" not in str(info.value)
    if target == 99.5:
        assert str(info.value).endswith("got 99.5 (for 99.5 % give 0.995)")


# ---------------------------------------------------------------------------------------------- time budget
class FakeProgress:
    """A ``rich.progress.Progress`` stand-in whose fine-tuning steps advance an injected clock by ``dt`` s."""

    def __init__(self, dt: float) -> None:
        self.now, self.dt, self.tasks, self.totals = 0.0, dt, {}, []

    def clock(self) -> float:
        return self.now

    def add_task(self, description, total=None):
        self.tasks[len(self.tasks)] = description
        return len(self.tasks) - 1

    def advance(self, task):
        if self.tasks[task] == "fine-tuning with token removal":
            self.now += self.dt

    def update(self, task, total=None):
        self.totals.append(total)


def test_the_minutes_cap_ends_training_before_its_steps(photos):
    """Each step takes 25 s on the injected clock: a 1-minute cap stops 200 planned steps after 3
    (the cap is checked before a step: 0, 25, 50 s start one; at 75 s the minute is over)."""
    model = tiny_model(**SALIENCY)
    fake = FakeProgress(dt=25.0)
    report = finetune(model, photos, FinetuneSettings(steps=200, minutes=1.0, views=2), progress=fake, clock=fake.clock)
    assert report.steps == len(report.losses) == 3 and report.seconds == 75.0
    assert report.settings["steps"] == 200 and report.settings["minutes"] == 1.0


def test_a_time_only_budget_plans_its_schedule_from_the_pace(photos):
    """``steps=0`` with minutes: train until the time is spent (2 s a step, 1 minute: 30 steps), the
    schedule's length re-estimated from the pace (5 steps in 10 s: 30 steps in all)."""
    model = tiny_model(**SALIENCY)
    fake = FakeProgress(dt=2.0)
    report = finetune(model, photos, FinetuneSettings(steps=0, minutes=1.0, views=2), progress=fake, clock=fake.clock)
    assert report.steps == 30 and report.seconds == 60.0
    assert fake.totals and set(fake.totals) == {30}


@pytest.mark.parametrize("other, what", [({"depth": 6}, "depth"), ({"num_heads": 4}, "num_heads"),
                                         ({"embed_dim": 48}, "embed_dim"), ({"num_classes": 2}, "num_classes"),
                                         ({"img_size": (64, 64)}, "img_size"), ({"init_values": None}, "weight blocks.0.ls")])
def test_a_reference_of_another_architecture_is_refused(other, what, photos, tmp_path):
    """Before any training: a deeper reference or one with other heads has the same weight shapes and was accepted."""
    src = save_checkpoint(tiny_model(**SALIENCY), tmp_path / "in.ckpt")
    ref = save_checkpoint(tiny_model(**{**SALIENCY, **other}), tmp_path / "ref.ckpt")
    with pytest.raises(InputError, match=f"reference .*ref.ckpt does not have the architecture of .*in.ckpt \\({what}") as info:
        finetune_checkpoint(src, tmp_path / "out.ckpt", FinetuneSettings(steps=1, views=1), reference=ref, photos=photos,
                            progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "out.ckpt").exists()


def test_a_reference_with_other_pause_points_is_the_same_architecture(tmp_path):
    """Pause points, policy and heads may differ: the reference only runs with nothing paused (accepted,
    so the call gets as far as looking for photos)."""
    src = save_checkpoint(tiny_model(**SALIENCY), tmp_path / "in.ckpt")
    ref = save_checkpoint(tiny_model(**{**SALIENCY, "pause_points": (2,), "policy": "confidence"}), tmp_path / "ref.ckpt")
    with pytest.raises(InputError, match="no training photos"):
        finetune_checkpoint(src, tmp_path / "out.ckpt", FinetuneSettings(steps=1, views=1), reference=ref, photos=[],
                            progress=False)


def test_knob_candidates_lie_inside_the_range():
    model = tiny_model(**SALIENCY)
    images = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    grid = knob_candidates(model, images)
    values = [g[0] for g in grid]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(0.0 <= v <= np.log(2) for v in values)


@pytest.mark.parametrize(
    "bad, pattern",
    [(dict(steps=-1), "steps"), (dict(lr=0.0), "lr"), (dict(views=0), "views"), (dict(min_keep=2.0), "min_keep"),
     (dict(steps=0), "minutes"), (dict(adapter_rank=0), "nothing to train"), (dict(adapter_rank=-1), "adapter_rank"),
     (dict(minutes=0.0), "minutes must be positive"), (dict(minutes=-2.0), "minutes must be positive"),
     (dict(steps=0, minutes=float("nan")), "minutes must be positive")],
)
def test_settings_validation(bad, pattern):
    with pytest.raises(InputError, match=pattern):
        FinetuneSettings(**bad).validate()


def test_finetune_refuses_models_without_token_heads(photos):
    with pytest.raises(InputError, match="pause points"):
        finetune(tiny_model(pause_points=()), photos, FinetuneSettings(steps=1, views=1))


# ---------------------------------------------------------------------------------------------- CLI
def _avit(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "avit.cli", *map(str, args)], capture_output=True, text=True, timeout=300)


def _one_line_error(proc, pattern: str) -> None:
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_finetune_bad_input_is_one_line(tmp_path):
    ckpt = save_checkpoint(tiny_model(**SALIENCY), tmp_path / "tiny.ckpt")
    _one_line_error(_avit("finetune", tmp_path / "missing.ckpt", "-o", tmp_path / "o.ckpt"), "not found")
    _one_line_error(_avit("finetune", ckpt, "-o", tmp_path), "directory")
    _one_line_error(_avit("finetune", ckpt, "-o", tmp_path / "o.ckpt", "--train-blocks", "--lr", "-1"), "lr")
    _one_line_error(_avit("finetune", ckpt, "-o", tmp_path / "o.ckpt", "--adapter-rank", "0"), "nothing to train")
    _one_line_error(_avit("finetune", ckpt, "-o", tmp_path / "o.ckpt", "--device", "tpu"), "device")
    static = save_checkpoint(tiny_model(pause_points=()), tmp_path / "static.ckpt")
    _one_line_error(_avit("finetune", static, "-o", tmp_path / "o.ckpt"), "pause points")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    _one_line_error(_avit("finetune", tmp_path / "junk.ckpt", "-o", tmp_path / "o.ckpt"), "junk.ckpt")
    assert not (tmp_path / "o.ckpt").exists()


def test_cli_finetune_refuses_a_percentage_target_a_zero_cap_and_another_architecture(tmp_path):
    ckpt = save_checkpoint(tiny_model(**SALIENCY), tmp_path / "tiny.ckpt")
    out = tmp_path / "o.ckpt"
    _one_line_error(_avit("finetune", ckpt, "-o", out, "--target", "99.5"),
                    "target agreement must be a fraction in (0, 1], got 99.5 (for 99.5 % give 0.995)")
    _one_line_error(_avit("finetune", ckpt, "-o", out, "--minutes", "0"), "minutes must be positive, got 0.0")
    deeper = save_checkpoint(tiny_model(**SALIENCY, depth=6), tmp_path / "deeper.ckpt")
    _one_line_error(_avit("finetune", ckpt, "-o", out, "--reference", deeper), "does not have the architecture of")
    assert not out.exists()


def test_cli_adapt_rejects_contradicting_finetune_options(tmp_path):
    _one_line_error(_avit("adapt", "-o", tmp_path / "m.ckpt", "--no-finetune", "--finetune-minutes", "3"), "contradict")
    _one_line_error(_avit("adapt", "-o", tmp_path / "m.ckpt", "--no-finetune", "--finetune-steps", "100"), "contradict")
    _one_line_error(_avit("adapt", "-o", tmp_path / "m.ckpt", "--finetune-steps", "-1"), "finetune_steps")


def test_cli_finetune_runs_the_steps_it_is_given_under_a_time_cap(tmp_path):
    """``--steps`` is the budget and ``--minutes`` only a cap: the record says exactly the steps asked for."""
    from avit.data import find_photos

    if len(find_photos("train")) < 3:
        pytest.skip("needs 3 installed training photos: pip install scikit-image")
    ckpt = save_checkpoint(tiny_model(**SALIENCY), tmp_path / "tiny.ckpt")
    proc = _avit("finetune", ckpt, "-o", tmp_path / "o.ckpt", "--steps", "3", "--minutes", "30", "--views", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    _, meta = load_checkpoint(tmp_path / "o.ckpt")
    assert meta["finetune"]["steps"] == 3
    assert meta["finetune"]["settings"]["minutes"] == 30 and meta["finetune"]["settings"]["steps"] == 3
    assert 0.0 <= meta["expected_agreement"] <= 1.0
