"""``AvitKeepRatioSelect``: keep the ⌈r·n⌉ most uncertain tokens of each image, compacted in order.

Method: the keep-ratio (top-k) policy of token pruning — DynamicViT (Rao et al., NeurIPS 2021) and
Token Cropr (Bergner et al., "Token Cropr: Faster ViTs for Quite a Few Tasks", CVPR 2025) keep a fixed
fraction of tokens ranked by a learned relevance score. Here the score is the same per-token uncertainty
as :mod:`avit.ops.entropy_select` (entropy or ``1 - max p`` of the token head): confident tokens are the
ones that pause. Ratio 1 keeps every token, 0 pauses every token.

Semantics::

    inputs   logits     float [B, n, C]   head logits of the n current slots
             counts     int64 [B]         real tokens per image; slots >= counts[b] are padding
             ratio      float []          keep ratio r (0-d)
    attr     score_mode int               0 entropy, 1 confidence
    outputs  keep_idx   int64 [B, m]      slots of the kept tokens, ascending, then 0-padding
             new_counts int64 [B]         k_b = clamp(ceil(r * counts[b]), 0, counts[b]), in float32
             size       int32 []          m, the TensorRT plugin's size tensor (unused by the graph)

The kept set of image b is the first k_b slots of a *stable* descending sort of the scores: ties go to
the lower slot, so every lowering selects the same tokens (``TopK`` alone does not define tie order).

Lowerings: :func:`keep_ratio_select` (PyTorch reference: stable sort), :func:`AvitKeepRatioSelect`
(standard ONNX ops: TopK for the k-th largest score, then an exact tie-break by position), TensorRT
plugin and host kernel in ``plugins/keep_ratio_select/``.
"""

from __future__ import annotations

import onnxscript
import torch
from onnxscript import FLOAT, INT32, INT64
from onnxscript import opset18 as op

from avit.ops._common import (
    AvitCompact,
    AvitSizeTensor,
    AvitTokenScores,
    AvitValidMask,
    compact,
    compact_fake,
    register_select_op,
    token_scores,
    valid_mask,
)
from avit.ops._registry import PLUGIN_NAMESPACE, PLUGIN_VERSION, avit_opset


def kept_per_image(ratio: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """int64 ``[B]``: ``clamp(ceil(ratio * counts), 0, counts)`` computed in float32 like every lowering."""
    k = torch.ceil(ratio.float() * counts.float()).to(torch.int64)
    return torch.minimum(torch.clamp(k, min=0), counts)


@torch.library.custom_op("avit::keep_ratio_select", mutates_args=())
def keep_ratio_select(
    logits: torch.Tensor, counts: torch.Tensor, ratio: torch.Tensor, score_mode: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference kernel. See the module docstring for shapes; returns ``(keep_idx, new_counts)``."""
    b, n = logits.shape[:2]
    valid = valid_mask(counts, n)
    scores = token_scores(logits, score_mode).masked_fill(~valid, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n).contiguous())
    keep = valid & (rank < kept_per_image(ratio, counts)[:, None])
    return compact(keep)


@keep_ratio_select.register_fake
def _keep_ratio_select_fake(logits, counts, ratio, score_mode=0):
    return compact_fake(logits, counts)


@onnxscript.script(avit_opset, default_opset=op)
def AvitKeepRatioSelect(
    logits: FLOAT,
    counts: INT64,
    ratio: FLOAT,
    score_mode: int = 0,
    plugin_namespace: str = PLUGIN_NAMESPACE,
    plugin_version: str = PLUGIN_VERSION,
) -> tuple[INT64, INT64, INT32]:
    """Standard-op lowering of avit::AvitKeepRatioSelect (see avit.ops.keep_ratio_select)."""
    valid = AvitValidMask(counts, op.Squeeze(op.Shape(logits, start=1, end=2)))
    scores = op.Where(valid, AvitTokenScores(logits, score_mode=score_mode), op.Constant(value_float=float("-inf")))
    zero = op.Constant(value_ints=[0])
    one = op.Constant(value_ints=[1])
    k = op.Cast(op.Ceil(op.Mul(ratio, op.Cast(counts, to=FLOAT.dtype))), to=INT64.dtype)
    k = op.Min(op.Max(k, zero), counts)
    k_max = op.ReduceMax(op.Concat(k, zero, axis=0), zero, keepdims=1)
    top_values, _ = op.TopK(scores, k_max, axis=1, largest=1, sorted=1)
    # k-th largest score per image; an image keeping nothing reads the +inf column appended here.
    batch = op.Shape(logits, start=0, end=1)
    inf_col = op.Expand(op.Constant(value_floats=[float("inf")]), op.Concat(batch, one, axis=0))
    padded = op.Concat(top_values, inf_col, axis=1)
    kth_col = op.Where(op.Greater(k, zero), op.Sub(k, one), k_max)
    kth = op.GatherElements(padded, op.Unsqueeze(kth_col, one), axis=1)
    above = op.And(valid, op.Greater(scores, kth))
    tied = op.And(valid, op.Equal(scores, kth))
    need = op.Sub(k, op.ReduceSum(op.Cast(above, to=INT64.dtype), one, keepdims=0))
    tie_rank = op.CumSum(op.Cast(tied, to=INT64.dtype), op.Constant(value_int=1))
    keep = op.Or(above, op.And(tied, op.LessOrEqual(tie_rank, op.Unsqueeze(need, one))))
    keep_idx, new_counts = AvitCompact(keep)
    size = AvitSizeTensor(new_counts)
    return keep_idx, new_counts, size


OP = register_select_op(
    "AvitKeepRatioSelect",
    torch.ops.avit.keep_ratio_select.default,
    AvitKeepRatioSelect,
    "ratio",
    "Keep the ceil(ratio * counts) tokens of highest uncertainty (stable: ties to the lower "
    "slot); emit their slots compacted in order, and the per-image counts.",
    "plugins/keep_ratio_select",
)
