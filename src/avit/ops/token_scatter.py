"""``AvitTokenScatter``: put tokens back into the full grid (reassembly before dense prediction).

Semantics::

    inputs   dst     float [B, N, D]   the full token grid
             idx     int64 [B, m]      grid positions of the m slots of src
             src     float [B, m, D]   token features to write
             counts  int64 [B]         real slots per image; slots j >= counts[b] are padding, never written
    output   out     float [B, N, D]   dst with out[b, idx[b, j], :] = src[b, j, :] for j < counts[b]

Real positions of one image are distinct (they come from a select op), so the result is deterministic.

Autograd (for training with real removal): ``dsrc`` = ``dout`` at the written positions (0 for padding
slots), ``ddst`` = ``dout`` everywhere else.

Lowerings: :func:`token_scatter` (PyTorch reference), :func:`AvitTokenScatter` (ONNX ``ScatterND`` into
the grid plus one trash row that absorbs the padding slots), TensorRT plugin and host kernel in
``plugins/token_scatter/``.
"""

from __future__ import annotations

import onnxscript
import torch
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op

from avit.ops._common import AvitValidMask, valid_mask
from avit.ops._registry import (
    FLOAT_TYPES,
    PLUGIN_ATTRIBUTES,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    AdaptiveOp,
    avit_opset,
    make_schema,
    register,
)


@torch.library.custom_op("avit::token_scatter", mutates_args=())
def token_scatter(dst: torch.Tensor, idx: torch.Tensor, src: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Reference kernel: see the module docstring for shapes."""
    out = dst.clone()
    real = valid_mask(counts, idx.shape[1])
    batch = torch.arange(dst.shape[0], device=dst.device)[:, None].expand_as(idx)
    out[batch[real], idx[real]] = src[real].to(out.dtype)
    return out


@token_scatter.register_fake
def _token_scatter_fake(dst, idx, src, counts):
    return torch.empty_like(dst)


def _token_scatter_setup_context(ctx, inputs, output):
    dst, idx, src, counts = inputs
    ctx.save_for_backward(idx, counts)
    ctx.src_dtype = src.dtype


def _token_scatter_backward(ctx, grad):
    """``dsrc[b, j] = grad[b, idx[b, j]]`` for real slots (0 for padding); ``ddst = grad`` except at the
    written positions (overwritten, so 0). ``idx`` and ``counts`` get no gradient."""
    idx, counts = ctx.saved_tensors
    real = valid_mask(counts, idx.shape[1])
    batch = torch.arange(grad.shape[0], device=grad.device)[:, None]
    grad_src = (grad[batch, idx] * real[:, :, None]).to(ctx.src_dtype)
    written = token_scatter(grad.new_zeros(grad.shape[:2] + (1,)), idx, grad.new_ones(idx.shape + (1,)), counts)
    return grad * (1 - written), None, grad_src, None


# Training through real removal (pause-aware fine-tuning): positions and counts are not differentiable.
torch.library.register_autograd(
    "avit::token_scatter", _token_scatter_backward, setup_context=_token_scatter_setup_context
)


@onnxscript.script(avit_opset, default_opset=op)
def AvitTokenScatter(
    dst: FLOAT,
    idx: INT64,
    src: FLOAT,
    counts: INT64,
    plugin_namespace: str = PLUGIN_NAMESPACE,
    plugin_version: str = PLUGIN_VERSION,
) -> FLOAT:
    """Standard-op lowering of avit::AvitTokenScatter (see avit.ops.token_scatter)."""
    grid = op.Shape(dst, start=1, end=2)
    real = AvitValidMask(counts, op.Squeeze(op.Shape(idx, start=1, end=2)))
    # Padding slots write to an extra trash row N, sliced off afterwards.
    target = op.Where(real, idx, grid)
    trash = op.Expand(
        op.Constant(value_float=0.0),
        op.Concat(op.Shape(dst, start=0, end=1), op.Constant(value_ints=[1]), op.Shape(dst, start=2, end=3), axis=0),
    )
    padded = op.Concat(dst, op.CastLike(trash, dst), axis=1)
    batch = op.Range(op.Constant(value_int=0), op.Squeeze(op.Shape(idx, start=0, end=1)), op.Constant(value_int=1))
    batch = op.Expand(op.Unsqueeze(batch, op.Constant(value_ints=[1])), op.Shape(idx))
    axis2 = op.Constant(value_ints=[2])
    indices = op.Concat(op.Unsqueeze(batch, axis2), op.Unsqueeze(target, axis2), axis=2)
    written = op.ScatterND(padded, indices, src)
    return op.Slice(written, op.Constant(value_ints=[0]), grid, op.Constant(value_ints=[1]))


OP = register(
    AdaptiveOp(
        onnx_name="AvitTokenScatter",
        torch_op=torch.ops.avit.token_scatter.default,
        lowering=AvitTokenScatter,
        helpers=(AvitValidMask,),
        schema=make_schema(
            "AvitTokenScatter",
            "out = dst; out[b, idx[b, j], :] = src[b, j, :] for j < counts[b]",
            inputs=[
                ("dst", FLOAT_TYPES),
                ("idx", "tensor(int64)"),
                ("src", FLOAT_TYPES),
                ("counts", "tensor(int64)"),
            ],
            outputs=[("out", FLOAT_TYPES)],
            attributes=list(PLUGIN_ATTRIBUTES),
        ),
        output_ranks=(3,),
        plugin_dir="plugins/token_scatter",
    )
)
