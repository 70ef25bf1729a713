"""AdaptiveViT in PyTorch: real removal, ragged batches, reassembly, config and MAC counts."""

from __future__ import annotations

import pytest
import torch

from avit.errors import ConfigError, InputError
from avit.exporter.parity import probe_thresholds
from avit.models import AdaptiveViTConfig, everything_paused, model_macs, nothing_paused
from conftest import bright_dark_model, tiny_config, tiny_model


@pytest.mark.parametrize("policy", ["entropy", "confidence", "keep_ratio"])
@pytest.mark.parametrize("fill", ["predict", "stale", "canvas"])
def test_nothing_paused_equals_static(images, policy, fill):
    model = tiny_model(policy=policy, fill=fill)
    with torch.no_grad():
        logits, kept = model(images, nothing_paused(model.config))
        ref, _ = model.static_copy()(images)
    assert kept.tolist() == [[24, 24]] * 3
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


def test_everything_paused_at_first_point(images):
    model = tiny_model(fill="stale")
    with torch.no_grad():
        logits, kept = model(images, everything_paused(model.config))
        full = model.forward_full(images)
    assert kept.tolist() == [[0, 0]] * 3
    # every token froze after block 1: the decoder sees exactly the block-1 features
    ref = model.decode(full.pause_tokens[0])
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("policy", ["entropy", "keep_ratio"])
def test_padding_never_changes_a_real_token(images, policy):
    model = tiny_model(policy=policy)
    t = torch.tensor([0.5, 0.5]) if policy == "keep_ratio" else probe_thresholds(model, images, [0.4, 0.5])
    with torch.no_grad():
        batch_logits, batch_kept = model(images, t)
        for i in range(images.shape[0]):
            one_logits, one_kept = model(images[i : i + 1], t)
            assert one_kept.tolist() == batch_kept[i : i + 1].tolist()
            torch.testing.assert_close(one_logits, batch_logits[i : i + 1], atol=1e-5, rtol=0)
    if policy == "entropy":
        assert len({tuple(k) for k in batch_kept.tolist()}) > 1, "images should keep different token counts"


def test_one_image_empty_another_full():
    """Crafted so the head is confident on a bright image and uniform on a dark one: at threshold 0.3
    image 0 pauses every token at pause point 1 and image 1 keeps all 24; the batch must equal the
    two images run alone."""
    model, imgs = bright_dark_model()
    with torch.no_grad():
        t = torch.tensor([0.3, 0.0])
        logits, kept = model(imgs, t)
        l0, k0 = model(imgs[:1], t)
        l1, k1 = model(imgs[1:], t)
        l_swapped, kept_swapped = model(imgs.flip(0), t)
    assert kept.tolist() == [[0, 0], [24, 24]]
    assert k0.tolist() == [[0, 0]] and k1.tolist() == [[24, 24]]
    torch.testing.assert_close(logits, torch.cat([l0, l1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(l_swapped, logits.flip(0), atol=1e-5, rtol=0)


def test_thresholds_checked(images):
    model = tiny_model()
    with pytest.raises(InputError, match="expected 2 pause thresholds"):
        model(images, torch.tensor([0.1]))
    with pytest.raises(InputError, match="NaN"):
        model(images, torch.tensor([0.1, float("nan")]))
    with pytest.raises(InputError, match="images must be"):
        model(images[:, :1], torch.tensor([0.1, 0.2]))


def test_monotone_in_threshold(images):
    model = tiny_model()
    previous = None
    for t in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0]:
        with torch.no_grad():
            _, kept = model(images, torch.tensor([t, t]))
        if previous is not None:
            assert (kept <= previous).all()
        previous = kept
    assert previous.sum() == 0


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(img_size=(65, 96)), "multiples of patch_size"),
        (dict(pause_points=(3, 1)), "strictly increasing"),
        (dict(pause_points=(4,)), "within \\[1, 3\\]"),
        (dict(policy="random"), "policy"),
        (dict(default_thresholds=(0.1,)), "default_thresholds has 1 values for 2"),
        (dict(embed_dim=30, num_heads=4), "multiple of num_heads"),
        (dict(fill="zeros"), "fill"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_config_json_roundtrip():
    cfg = tiny_config(default_thresholds=(0.1, 0.2), class_names=("a", "b", "c"))
    assert AdaptiveViTConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="unknown config keys: bogus"):
        AdaptiveViTConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_macs():
    cfg = tiny_config(pause_points=(1, 3), fill="stale")
    full = model_macs(cfg)
    assert model_macs(cfg, [24, 24])["total"] == full["total"]
    d, f, n = 32, 128, 25  # 24 patches + CLS
    block = 4 * n * d * d + 2 * n * n * d + 2 * n * d * f
    assert full["blocks"] == 4 * block
    half = model_macs(cfg, [12, 6])
    assert half["total"] < full["total"] and half["decoder"] == full["decoder"]
    empty = model_macs(cfg, [0, 0])
    assert empty["blocks"] == block + 3 * (4 * d * d + 2 * d + 2 * d * f)  # CLS alone after point 1
    with pytest.raises(ValueError):
        model_macs(cfg, [25, 1])


def test_with_policy_shares_backbone_and_heads(images):
    """with_policy: dtop/keep_ratio views of one model run the same backbone (identical outputs with nothing
    paused), score with the same heads (dtop with k = 0 pauses exactly the confidence policy's tokens), and
    refuse acm."""
    model = tiny_model(pause_points=(1, 3), fill="predict", num_classes=2)
    dtop, conf = model.with_policy("dtop"), model.with_policy("confidence")
    assert dtop.config.fill == "canvas" and dtop.config.thresholds_or_default == (0.0, 0.0)
    with torch.no_grad():
        ref, _ = model(images, nothing_paused(model.config))
        for derived in (dtop, conf, model.with_policy("keep_ratio")):
            out, kept = derived(images, nothing_paused(derived.config))
            assert torch.allclose(out, ref, atol=1e-5) and (kept == 24).all()
        t = torch.tensor([0.3, 0.3])
        _, kept_dtop = dtop(images, t, dtop_k=torch.tensor(0))
        _, kept_conf = conf(images, t)
        assert torch.equal(kept_dtop, kept_conf) and (kept_conf < 24).any()
    with pytest.raises(ConfigError, match="use acmize"):
        model.with_policy("acm")
