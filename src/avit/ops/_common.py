"""Pieces shared by the select ops: per-token scores and order-preserving compaction.

Both exist twice, once per lowering, and nowhere else: as PyTorch (reference kernels) and as onnxscript
(ONNX lowering, attached to exported models as helper local functions ``avit::AvitTokenScores`` and
``avit::AvitCompact``). The TensorRT plugins' host kernels implement the same definitions in C++.
"""

from __future__ import annotations

import onnxscript
import torch
from onnx.helper import make_tensor
from onnxscript import BOOL, FLOAT, INT32, INT64
from onnxscript import opset18 as op

from avit.ops._registry import FLOAT_TYPES, PLUGIN_ATTRIBUTES, AdaptiveOp, avit_opset, make_schema, register

#: ``score_mode`` attribute values.
SCORE_ENTROPY = 0
SCORE_CONFIDENCE = 1
SCORE_MODES = {"entropy": SCORE_ENTROPY, "confidence": SCORE_CONFIDENCE}


def token_scores(logits: torch.Tensor, score_mode: int) -> torch.Tensor:
    """Per-token uncertainty of a token head's prediction (reference).

    Args:
        logits: float ``[B, n, C]`` head logits.
        score_mode: :data:`SCORE_ENTROPY` → softmax entropy in nats, ``-Σ p log p`` (PAUMER);
            :data:`SCORE_CONFIDENCE` → ``1 - max p`` (DToP's confidence, expressed as uncertainty).

    Returns:
        float32 ``[B, n]``, every value ``>= 0`` exactly (so threshold 0 never pauses a token).

    Raises:
        ValueError: unknown ``score_mode``.
    """
    logp = torch.log_softmax(logits.float(), dim=2)
    if score_mode == SCORE_ENTROPY:
        return -(logp.exp() * logp).sum(dim=2)
    if score_mode == SCORE_CONFIDENCE:
        return 1.0 - logp.amax(dim=2).exp()
    raise ValueError(f"unknown score_mode {score_mode}; expected 0 (entropy) or 1 (confidence)")


def valid_mask(counts: torch.Tensor, n: int) -> torch.Tensor:
    """bool ``[B, n]``: slot ``i`` of image ``b`` holds a real token iff ``i < counts[b]``."""
    return torch.arange(n, device=counts.device)[None, :] < counts[:, None]


def compact(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order-preserving compaction of a keep mask (reference).

    Args:
        keep: bool ``[B, n]``.

    Returns:
        ``(keep_idx, counts)``: int64 ``[B, m]`` with ``m = max(counts)``, row ``b`` holding the
        positions of the kept slots in ascending order followed by zeros (padding); int64 ``[B]``
        number of kept slots per image.
    """
    b, n = keep.shape
    counts = keep.sum(dim=1, dtype=torch.int64)
    m = int(counts.max()) if b > 0 else 0
    dest = torch.where(keep, keep.cumsum(dim=1) - 1, m)
    out = torch.zeros(b, m + 1, dtype=torch.int64, device=keep.device)
    out.scatter_(1, dest, torch.arange(n, device=keep.device).expand(b, n))
    return out[:, :m].contiguous(), counts


def compact_fake(first: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake (meta) kernel of every select op: :func:`compact`'s outputs for a ``[B, n, …]`` input ``first``
    — int64 ``[B, m]`` with ``m`` a new data-dependent size, and int64 ``[B]`` shaped like ``counts``."""
    m = torch.library.get_ctx().new_dynamic_size()
    return first.new_empty((first.shape[0], m), dtype=torch.int64), counts.new_empty(counts.shape)


# --------------------------------------------------------------------------------------------------
# ONNX lowering (standard ops, opset 18). Reductions use positive axes: ONNX Runtime 1.31 CPU returns
# a wrong shape for negative-axis reductions over a zero-size dimension (0 active tokens).


@onnxscript.script(avit_opset, default_opset=op)
def AvitTokenScores(logits: FLOAT, score_mode: int = 0) -> FLOAT:
    """float [B, n, C] logits -> float [B, n] uncertainty (entropy if score_mode == 0, else 1 - p_max)."""
    logp = op.LogSoftmax(op.Cast(logits, to=FLOAT.dtype), axis=2)
    axis2 = op.Constant(value_ints=[2])
    entropy = op.Neg(op.ReduceSum(op.Mul(op.Exp(logp), logp), axis2, keepdims=0))
    uncertainty = op.Sub(op.Constant(value_float=1.0), op.Exp(op.ReduceMax(logp, axis2, keepdims=0)))
    use_entropy = op.Equal(op.Constant(value_int=score_mode), op.Constant(value_int=0))
    return op.Where(use_entropy, entropy, uncertainty)


@onnxscript.script(avit_opset, default_opset=op)
def AvitValidMask(counts: INT64, n: INT64) -> BOOL:
    """int64 [B] counts, int64 scalar n -> bool [B, n]: slot i of image b is real iff i < counts[b]."""
    positions = op.Range(op.Constant(value_int=0), n, op.Constant(value_int=1))
    return op.Less(
        op.Unsqueeze(positions, op.Constant(value_ints=[0])),
        op.Unsqueeze(counts, op.Constant(value_ints=[1])),
    )


@onnxscript.script(avit_opset, default_opset=op)
def AvitCompact(keep: BOOL) -> tuple[INT64, INT64]:
    """bool [B, n] -> (int64 [B, m] ascending kept positions padded with 0, int64 [B] counts)."""
    keep_i = op.Cast(keep, to=INT64.dtype)
    counts = op.ReduceSum(keep_i, op.Constant(value_ints=[1]), keepdims=0)
    # m = max(counts), 0 for an empty batch: reduce over counts and a trailing 0.
    m = op.ReduceMax(
        op.Concat(counts, op.Constant(value_ints=[0]), axis=0), op.Constant(value_ints=[0]), keepdims=1
    )
    # Kept slot i goes to column cumsum(keep)[i] - 1; dropped slots go to the trash column m.
    dest = op.Where(keep, op.Sub(op.CumSum(keep_i, op.Constant(value_int=1)), op.Constant(value_int=1)), m)
    batch = op.Shape(keep, start=0, end=1)
    n = op.Shape(keep, start=1, end=2)
    positions = op.Range(op.Constant(value_int=0), op.Squeeze(n), op.Constant(value_int=1))
    updates = op.Expand(op.Unsqueeze(positions, op.Constant(value_ints=[0])), op.Concat(batch, n, axis=0))
    zeros = op.ConstantOfShape(
        op.Concat(batch, op.Add(m, op.Constant(value_ints=[1])), axis=0),
        value=make_tensor("zero", INT64.dtype, [1], [0]),
    )
    scattered = op.ScatterElements(zeros, dest, updates, axis=1)
    keep_idx = op.Slice(scattered, op.Constant(value_ints=[0]), m, op.Constant(value_ints=[1]))
    return keep_idx, counts


@onnxscript.script(avit_opset, default_opset=op)
def AvitSizeTensor(counts: INT64) -> INT32:
    """int64 [B] counts -> int32 scalar max(counts) (0 for B = 0): TensorRT's size tensor of a select plugin."""
    zero = op.Constant(value_ints=[0])
    return op.Cast(op.ReduceMax(op.Concat(counts, zero, axis=0), zero, keepdims=0), to=INT32.dtype)


def register_select_op(
    onnx_name: str, torch_op, lowering: onnxscript.OnnxFunction, value_name: str, doc: str, plugin_dir: str
) -> AdaptiveOp:
    """Register a select op: inputs (logits, counts, <value_name>), outputs (keep_idx, new_counts, size),
    attribute ``score_mode`` plus the plugin attributes; lowering helpers are this module's functions."""
    import onnx

    return register(
        AdaptiveOp(
            onnx_name=onnx_name,
            torch_op=torch_op,
            lowering=lowering,
            helpers=(AvitTokenScores, AvitValidMask, AvitCompact, AvitSizeTensor),
            schema=make_schema(
                onnx_name,
                doc,
                inputs=[("logits", FLOAT_TYPES), ("counts", "tensor(int64)"), (value_name, "tensor(float)")],
                outputs=[("keep_idx", "tensor(int64)"), ("new_counts", "tensor(int64)"), ("size", "tensor(int32)")],
                attributes=[("score_mode", onnx.defs.OpSchema.AttrType.INT, "0 entropy, 1 confidence", 0), *PLUGIN_ATTRIBUTES],
            ),
            output_ranks=(2, 1, 0),
            plugin_dir=plugin_dir,
        )
    )
