"""``AvitScoreSelect``: keep the slots whose precomputed score is not below a threshold, compacted in order.

The select op for decisions made by the model itself rather than by a token head's softmax: ACM's gate
(Wójcik et al., "Adaptive Computation Modules: Granular Conditional Computation for Efficient
Inference", AAAI 2025) predicts per token how much error remains after each learner, and learner level
``j`` of an ACM MLP runs on exactly the tokens whose predicted remaining error ``e_j`` is not below the
runtime tolerance (:mod:`avit.models.acm`). :mod:`avit.ops.entropy_select` is this op applied to
:func:`avit.ops.token_scores` of the head logits.

Semantics (all lowerings agree bit-for-bit on the integer outputs given the same scores)::

    inputs   scores     float [B, n]      per-slot score
             counts     int64 [B]         real slots per image; slots >= counts[b] are padding
             threshold  float []          0-d
    outputs  keep_idx   int64 [B, m]      slots i < counts[b] with NOT(scores[b, i] < threshold), ascending,
                                          then 0-padding; m = max(new_counts) (data-dependent)
             new_counts int64 [B]         kept slots per image
             size       int32 []          m (what a TensorRT plugin would declare as its size tensor)

Threshold ``-inf`` (or any value not above the smallest score) keeps every real slot, ``+inf`` none; a
NaN score is kept (as in :mod:`avit.ops.entropy_select`).

Lowerings: :func:`score_select` (PyTorch reference), :func:`AvitScoreSelect` (standard ONNX ops: the
compaction of the select ops). No TensorRT plugin yet: the node carries no plugin attributes and TensorRT
inlines the local function (contract of a future plugin — the entropy-select plugin without its scoring
step — in docs/methods.md).
"""

from __future__ import annotations

import onnxscript
import torch
from onnxscript import FLOAT, INT32, INT64
from onnxscript import opset18 as op

from avit.ops._common import AvitCompact, AvitSizeTensor, AvitValidMask, compact, compact_fake, valid_mask
from avit.ops._registry import (
    FLOAT_TYPES,
    AdaptiveOp,
    avit_opset,
    make_schema,
    register,
)


@torch.library.custom_op("avit::score_select", mutates_args=())
def score_select(scores: torch.Tensor, counts: torch.Tensor, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference kernel. See the module docstring for shapes; returns ``(keep_idx, new_counts)``."""
    keep = valid_mask(counts, scores.shape[1]) & ~(scores.float() < threshold)
    return compact(keep)


@score_select.register_fake
def _score_select_fake(scores, counts, threshold):
    return compact_fake(scores, counts)


@onnxscript.script(avit_opset, default_opset=op)
def AvitScoreSelect(scores: FLOAT, counts: INT64, threshold: FLOAT) -> tuple[INT64, INT64, INT32]:
    """Standard-op lowering of avit::AvitScoreSelect (see avit.ops.score_select)."""
    valid = AvitValidMask(counts, op.Squeeze(op.Shape(scores, start=1, end=2)))
    keep = op.And(valid, op.Not(op.Less(op.Cast(scores, to=FLOAT.dtype), threshold)))
    keep_idx, new_counts = AvitCompact(keep)
    size = AvitSizeTensor(new_counts)
    return keep_idx, new_counts, size


OP = register(
    AdaptiveOp(
        onnx_name="AvitScoreSelect",
        torch_op=torch.ops.avit.score_select.default,
        lowering=AvitScoreSelect,
        helpers=(AvitValidMask, AvitCompact, AvitSizeTensor),
        schema=make_schema(
            "AvitScoreSelect",
            "Keep the real slots whose score is not below threshold; emit their slots compacted in order, "
            "and the per-image counts.",
            inputs=[("scores", FLOAT_TYPES), ("counts", "tensor(int64)"), ("threshold", "tensor(float)")],
            outputs=[("keep_idx", "tensor(int64)"), ("new_counts", "tensor(int64)"), ("size", "tensor(int32)")],
        ),
        output_ranks=(2, 1, 0),
        plugin_dir=None,
    )
)
