"""``AvitClassContextSelect``: DToP's early exit — confident tokens exit, except the k most confident
exit candidates of every class, which stay active as context; compacted in order.

Method: DToP (Tang et al., "Dynamic Token Pruning in Plain Vision Transformers for Semantic
Segmentation", ICCV 2023). At an auxiliary stage a token whose confidence ``max p`` exceeds the stage
threshold becomes an exit candidate; for every class, the k most confident candidates predicted as that
class stay active "to keep context" (the paper's k = 5; in the authors' code,
``mmseg_custom/decode_heads/prune_head.py`` of github.com/zbwxp/Dynamic-Token-Pruning, the top
``min(count, 5)`` candidates per predicted class are removed from the exit set). Every other candidate
exits: its prediction is final (the model's canvas, ``fill="canvas"``).

Scores are :func:`avit.ops.token_scores` (``score_mode`` 1 = ``1 - max p``, DToP's confidence expressed
as uncertainty; 0 = entropy), so with k = 0 this op is exactly :mod:`avit.ops.entropy_select`: a token is
a candidate when its score is below ``threshold`` (0 never, ``+inf`` always).

Semantics (all lowerings agree bit-for-bit on the integer outputs given the same scores)::

    inputs   logits     float [B, n, C]   head logits of the n current slots
             counts     int64 [B]         real tokens per image; slots >= counts[b] are padding
             threshold  float []          exit threshold on the score (0-d)
             k          int64 []          context tokens kept per class (0-d; k <= 0 keeps none)
    attr     score_mode int               0 entropy, 1 confidence (DToP: 1)
    outputs  keep_idx   int64 [B, m]      slots of the kept tokens, ascending, then 0-padding;
                                          m = max(new_counts) (data-dependent)
             new_counts int64 [B]         kept tokens per image
             size       int32 []          m (what a TensorRT plugin would declare as its size tensor)

    class(i)     = argmax_c logits[b, i, c]            (first maximum on ties, on float32 logits)
    candidate(i) = i < counts[b]  and  score(i) < threshold
    rank(i)      = #{ j candidate : class(j) = class(i) and (score(j) < score(i)
                                     or (score(j) = score(i) and j < i)) }   (stable: ties to the lower slot)
    keep(i)      = i < counts[b]  and  (not candidate(i)  or  rank(i) < k)

Lowerings: :func:`class_context_select` (PyTorch reference: exact pairwise ranks),
:func:`AvitClassContextSelect` (standard ONNX ops: per image and class, ``TopK`` gives the k-th smallest
candidate score, the ties at that value are resolved by a positional ``CumSum`` — exact, no reliance on
``TopK``'s tie order; cost ``O(B·C·n)``). No TensorRT plugin yet: the node carries no plugin attributes
and TensorRT inlines the local function (contract of a future plugin: docs/methods.md).
"""

from __future__ import annotations

import onnxscript
import torch
from onnx.defs import OpSchema
from onnxscript import FLOAT, INT32, INT64
from onnxscript import opset18 as op

from avit.ops._common import (
    AvitCompact,
    AvitSizeTensor,
    AvitTokenScores,
    AvitValidMask,
    compact,
    compact_fake,
    token_scores,
    valid_mask,
)
from avit.ops._registry import (
    FLOAT_TYPES,
    AdaptiveOp,
    avit_opset,
    make_schema,
    register,
)


def class_context(scores: torch.Tensor, classes: torch.Tensor, candidate: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """bool ``[B, n]``: the candidates among the ``k`` lowest-scored candidates of their class (reference).

    ``scores`` float ``[B, n]``, ``classes`` int64 ``[B, n]``, ``candidate`` bool ``[B, n]``, ``k`` int64 ``[]``.
    Ranks are exact pairwise counts with ties going to the lower slot.
    """
    n = scores.shape[1]
    slot = torch.arange(n, device=scores.device)
    same = (classes[:, :, None] == classes[:, None, :]) & candidate[:, None, :]  # [B, i, j]
    s_i, s_j = scores[:, :, None], scores[:, None, :]
    before = (s_j < s_i) | ((s_j == s_i) & (slot[None, None, :] < slot[None, :, None]))
    rank = (same & before).sum(dim=2)
    return candidate & (rank < k.clamp(min=0))


@torch.library.custom_op("avit::class_context_select", mutates_args=())
def class_context_select(
    logits: torch.Tensor, counts: torch.Tensor, threshold: torch.Tensor, k: torch.Tensor, score_mode: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference kernel. See the module docstring for shapes; returns ``(keep_idx, new_counts)``."""
    valid = valid_mask(counts, logits.shape[1])
    scores = token_scores(logits, score_mode)
    candidate = valid & (scores < threshold)
    classes = logits.float().argmax(dim=2)
    keep = valid & (~candidate | class_context(scores, classes, candidate, k))
    return compact(keep)


@class_context_select.register_fake
def _class_context_select_fake(logits, counts, threshold, k, score_mode=1):
    return compact_fake(logits, counts)


@onnxscript.script(avit_opset, default_opset=op)
def AvitClassContextSelect(
    logits: FLOAT,
    counts: INT64,
    threshold: FLOAT,
    k: INT64,
    score_mode: int = 1,
) -> tuple[INT64, INT64, INT32]:
    """Standard-op lowering of avit::AvitClassContextSelect (see avit.ops.class_context_select)."""
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    axis1 = op.Constant(value_ints=[1])
    axis2 = op.Constant(value_ints=[2])
    n = op.Squeeze(op.Shape(logits, start=1, end=2))
    valid = AvitValidMask(counts, n)
    scores = AvitTokenScores(logits, score_mode=score_mode)
    candidate = op.And(valid, op.Less(scores, threshold))
    classes = op.ArgMax(op.Cast(logits, to=FLOAT.dtype), axis=2, keepdims=0, select_last_index=0)
    # [B, C, n]: candidate i of class c; its key is -score (larger = more confident), -inf elsewhere.
    num_classes = op.Squeeze(op.Shape(logits, start=2, end=3))
    class_ids = op.Unsqueeze(op.Range(zero, num_classes, one), op.Constant(value_ints=[0, 2]))
    member = op.And(op.Unsqueeze(candidate, axis1), op.Equal(op.Unsqueeze(classes, axis1), class_ids))
    key = op.Where(member, op.Neg(op.Unsqueeze(scores, axis1)), op.Constant(value_float=float("-inf")))
    # k clamped to [0, n] (TopK needs k <= n); the k-th largest key per (image, class), +inf when k = 0.
    kk = op.Min(op.Max(k, zero), n)
    top_values, _ = op.TopK(key, op.Reshape(kk, op.Constant(value_ints=[1])), axis=2, largest=1, sorted=1)
    inf_col = op.Expand(
        op.Constant(value_floats=[float("inf")]),
        op.Concat(op.Shape(key, start=0, end=2), op.Constant(value_ints=[1]), axis=0),
    )
    padded = op.Concat(top_values, inf_col, axis=2)
    kth_col = op.Where(op.Greater(kk, zero), op.Sub(kk, one), kk)
    kth = op.Unsqueeze(op.Gather(padded, kth_col, axis=2), axis2)
    above = op.And(member, op.Greater(key, kth))
    tied = op.And(member, op.Equal(key, kth))
    need = op.Sub(kk, op.ReduceSum(op.Cast(above, to=INT64.dtype), axis2, keepdims=1))
    tie_rank = op.CumSum(op.Cast(tied, to=INT64.dtype), op.Constant(value_int=2))
    context3 = op.Or(above, op.And(tied, op.LessOrEqual(tie_rank, need)))
    context = op.Greater(op.ReduceSum(op.Cast(context3, to=INT64.dtype), axis1, keepdims=0), zero)
    keep = op.And(valid, op.Or(op.Not(candidate), context))
    keep_idx, new_counts = AvitCompact(keep)
    size = AvitSizeTensor(new_counts)
    return keep_idx, new_counts, size


OP = register(
    AdaptiveOp(
        onnx_name="AvitClassContextSelect",
        torch_op=torch.ops.avit.class_context_select.default,
        lowering=AvitClassContextSelect,
        helpers=(AvitTokenScores, AvitValidMask, AvitCompact, AvitSizeTensor),
        schema=make_schema(
            "AvitClassContextSelect",
            "DToP early exit: keep the tokens whose score is not below threshold, plus, for every class, the "
            "k lowest-scored exit candidates predicted as that class (stable: ties to the lower slot); emit "
            "their slots compacted in order, and the per-image counts.",
            inputs=[
                ("logits", FLOAT_TYPES),
                ("counts", "tensor(int64)"),
                ("threshold", "tensor(float)"),
                ("k", "tensor(int64)"),
            ],
            outputs=[("keep_idx", "tensor(int64)"), ("new_counts", "tensor(int64)"), ("size", "tensor(int32)")],
            attributes=[("score_mode", OpSchema.AttrType.INT, "0 entropy, 1 confidence", 1)],
        ),
        output_ranks=(2, 1, 0),
        plugin_dir=None,
    )
)
