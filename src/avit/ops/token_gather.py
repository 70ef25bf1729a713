"""``AvitTokenGather``: take the kept tokens out of the sequence (real removal, not masking).

Semantics::

    inputs   x    float [B, n, D]   token features
             idx  int64 [B, m]      slots to take (from a select op; padding entries are valid slots)
    output   y    float [B, m, D]   y[b, j, :] = x[b, idx[b, j], :]

Autograd (for training with real removal): ``dx`` = scatter-add of ``dy`` into the taken slots.

Lowerings: :func:`token_gather` (PyTorch reference), :func:`AvitTokenGather` (ONNX ``GatherND`` with
``batch_dims=1``), TensorRT plugin and host kernel in ``plugins/token_gather/``.
"""

from __future__ import annotations

import onnxscript
import torch
from onnxscript import FLOAT, INT64
from onnxscript import opset18 as op

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


@torch.library.custom_op("avit::token_gather", mutates_args=())
def token_gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Reference kernel: float ``[B, n, D]``, int64 ``[B, m]`` → float ``[B, m, D]``."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[batch, idx]


@token_gather.register_fake
def _token_gather_fake(x, idx):
    return x.new_empty((x.shape[0], idx.shape[1], x.shape[2]))


def _token_gather_setup_context(ctx, inputs, output):
    x, idx = inputs
    ctx.save_for_backward(idx)
    ctx.x_shape = x.shape


def _token_gather_backward(ctx, grad):
    """dL/dx = scatter-add of ``grad`` into the slots it was taken from (a padding entry that repeats a
    slot adds its gradient there too, exactly as the forward copied it); ``idx`` gets no gradient."""
    (idx,) = ctx.saved_tensors
    grad_x = grad.new_zeros(ctx.x_shape)
    grad_x.scatter_add_(1, idx[:, :, None].expand(-1, -1, grad.shape[2]), grad)
    return grad_x, None


# Training through real removal (pause-aware fine-tuning): selection indices are not differentiable.
torch.library.register_autograd(
    "avit::token_gather", _token_gather_backward, setup_context=_token_gather_setup_context
)


@onnxscript.script(avit_opset, default_opset=op)
def AvitTokenGather(
    x: FLOAT, idx: INT64, plugin_namespace: str = PLUGIN_NAMESPACE, plugin_version: str = PLUGIN_VERSION
) -> FLOAT:
    """Standard-op lowering of avit::AvitTokenGather (see avit.ops.token_gather)."""
    return op.GatherND(x, op.Unsqueeze(idx, op.Constant(value_ints=[2])), batch_dims=1)


OP = register(
    AdaptiveOp(
        onnx_name="AvitTokenGather",
        torch_op=torch.ops.avit.token_gather.default,
        lowering=AvitTokenGather,
        schema=make_schema(
            "AvitTokenGather",
            "y[b, j, :] = x[b, idx[b, j], :]",
            inputs=[("x", FLOAT_TYPES), ("idx", "tensor(int64)")],
            outputs=[("y", FLOAT_TYPES)],
            attributes=list(PLUGIN_ATTRIBUTES),
        ),
        output_ranks=(3,),
        plugin_dir="plugins/token_gather",
    )
)
