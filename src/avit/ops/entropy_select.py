"""``AvitEntropySelect``: threshold each token's uncertainty, keep the uncertain ones, compacted.

Method: PAUMER (Courdier et al., "PAUMER: Patch Pausing Transformer for Semantic Segmentation",
BMVC 2022) pauses a token when the softmax entropy of its auxiliary head's prediction is below a
threshold; DToP (Tang et al., "Dynamic Token Pruning in Plain Vision Transformers for Semantic
Segmentation", ICCV 2023) lets a token exit when its confidence ``max p`` is high. Both are this op:
``score_mode`` 0 scores a token by entropy (nats), 1 by ``1 - max p``; a token *pauses* when its score is
below ``threshold``. Threshold 0 never pauses a token (scores are ``>= 0``), ``+inf`` pauses every token.

Semantics (all lowerings agree bit-for-bit on the integer outputs given the same scores)::

    inputs   logits     float [B, n, C]   head logits of the n current slots
             counts     int64 [B]         real tokens per image; slots >= counts[b] are padding
             threshold  float []          pause threshold (0-d)
    attr     score_mode int               0 entropy, 1 confidence
    outputs  keep_idx   int64 [B, m]      slots of the kept tokens, ascending, then 0-padding;
                                          m = max(new_counts) (data-dependent)
             new_counts int64 [B]         kept tokens per image
             size       int32 []          m, the TensorRT plugin's size tensor (unused by the graph)

Lowerings: :func:`entropy_select` (PyTorch reference), :func:`AvitEntropySelect` (standard ONNX ops),
TensorRT plugin and host kernel in ``plugins/entropy_select/``.
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


@torch.library.custom_op("avit::entropy_select", mutates_args=())
def entropy_select(
    logits: torch.Tensor, counts: torch.Tensor, threshold: torch.Tensor, score_mode: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference kernel. See the module docstring for shapes; returns ``(keep_idx, new_counts)``."""
    keep = valid_mask(counts, logits.shape[1]) & ~(token_scores(logits, score_mode) < threshold)
    return compact(keep)


@entropy_select.register_fake
def _entropy_select_fake(logits, counts, threshold, score_mode=0):
    return compact_fake(logits, counts)


@onnxscript.script(avit_opset, default_opset=op)
def AvitEntropySelect(
    logits: FLOAT,
    counts: INT64,
    threshold: FLOAT,
    score_mode: int = 0,
    plugin_namespace: str = PLUGIN_NAMESPACE,
    plugin_version: str = PLUGIN_VERSION,
) -> tuple[INT64, INT64, INT32]:
    """Standard-op lowering of avit::AvitEntropySelect (see avit.ops.entropy_select)."""
    scores = AvitTokenScores(logits, score_mode=score_mode)
    valid = AvitValidMask(counts, op.Squeeze(op.Shape(logits, start=1, end=2)))
    keep = op.And(valid, op.Not(op.Less(scores, threshold)))
    keep_idx, new_counts = AvitCompact(keep)
    size = AvitSizeTensor(new_counts)
    return keep_idx, new_counts, size


OP = register_select_op(
    "AvitEntropySelect",
    torch.ops.avit.entropy_select.default,
    AvitEntropySelect,
    "threshold",
    "Keep the tokens whose entropy (score_mode 0) or 1 - max p (score_mode 1) is not below "
    "threshold; emit their slots compacted in order, and the per-image counts.",
    "plugins/entropy_select",
)
