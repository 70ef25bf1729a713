"""Shared fixtures: tiny adaptive ViTs whose token heads are confident on some tokens and not others."""

from __future__ import annotations

import pytest
import torch

from avit.models import AdaptiveViT, AdaptiveViTConfig


def tiny_config(**overrides) -> AdaptiveViTConfig:
    """A small, fast config (64×96 px, patch 16 → 24 tokens, depth 4)."""
    base = dict(
        img_size=(64, 96), patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=3,
        pause_points=(1, 3), init_values=0.5, decoder="linear",
    )
    base.update(overrides)
    return AdaptiveViTConfig(**base)


def tiny_model(config: AdaptiveViTConfig | None = None, seed: int = 0, **overrides) -> AdaptiveViT:
    """A randomly initialised model whose heads spread token scores widely (so thresholds matter)."""
    torch.manual_seed(seed)
    model = AdaptiveViT(config or tiny_config(**overrides)).eval()
    with torch.no_grad():
        for head in model.pause_heads:
            head.fc.weight.normal_(std=2.0)
            if head.feature is not None:  # identity-initialised; perturb it so the fill differs from "stale"
                head.feature.weight.add_(torch.randn_like(head.feature.weight) * 0.05)
    return model


@pytest.fixture(scope="session")
def hk():
    """The host-kernel library (plugins/host, compiled once per session): test_plugin_kernels compares it with
    the reference ops, test_plugin_cuda with the GPU kernels."""
    from test_plugin_kernels import HostKernels, _build_host_library

    return HostKernels(_build_host_library())


@pytest.fixture
def images() -> torch.Tensor:
    """float32 [3, 3, 64, 96] seeded noise images."""
    return torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(1))


def bright_dark_model() -> tuple[AdaptiveViT, torch.Tensor]:
    """A model whose first token head is confident on a bright image and uniform on a dark one.

    Returns the model and float32 ``[2, 3, 64, 96]`` images (bright, dark): at pause thresholds
    ``(0.3, 0)`` the bright image pauses all 24 tokens at pause point 1 and the dark one keeps all.
    """
    model = tiny_model(pause_points=(1, 3), fill="predict", num_classes=2)
    with torch.no_grad():
        model.pos_embed.zero_()
        model.patch_embed.proj.bias.zero_()
        model.blocks[0].ls1.gamma.zero_()  # block 0 = identity: tokens are c · v for a constant image c
        model.blocks[0].ls2.gamma.zero_()
        v = model.patch_embed.proj.weight.sum(dim=(1, 2, 3))
        v_hat = (v - v.mean()) / v.std(unbiased=False)  # LayerNorm(c · v) = sign(c) · v_hat
        head = model.pause_heads[0]
        head.norm.weight.fill_(1.0)
        head.norm.bias.zero_()
        head.fc.weight.zero_()
        head.fc.weight[0] = 5 * v_hat / v_hat.dot(v_hat)
        head.fc.bias.copy_(torch.tensor([5.0, 0.0]))  # bright: logits (10, 0); dark: (0, 0)
    images = torch.stack([torch.full((3, 64, 96), 1.0), torch.full((3, 64, 96), -1.0)])
    return model, images
