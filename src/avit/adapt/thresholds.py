"""The uniform threshold grid of each policy and the agreement target of the defaults.

The grid is one scalar family — the same value at every pause point, from "nothing pauses" towards
"everything pauses" — on which ``avit adapt`` reports held-out agreement. The defaults themselves are
chosen by :func:`avit.adapt.finetune.choose_defaults_by_folds` (settings by keep fraction, worst fold of
the training photos ≥ :data:`TARGET_AGREEMENT`).
"""

from __future__ import annotations

import torch

from avit.models.vit import AdaptiveViT

#: Default agreement target (mean pixel agreement with the full model).
TARGET_AGREEMENT = 0.995

#: Candidate values per policy, mildest first: entropy in nats (≤ ln 2 for two classes), ``1 - max p``,
#: keep ratios.
CANDIDATES: dict[str, tuple[float, ...]] = {
    "entropy": (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65),
    "confidence": (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4),
    "keep_ratio": (0.97, 0.94, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2),
}


def candidate_settings(model: AdaptiveViT) -> list[tuple[float, ...]]:
    """The uniform candidate settings of ``model``'s policy, mildest first."""
    p = model.num_pause_points
    values = CANDIDATES[model.config.policy]
    if model.config.policy == "entropy" and model.config.head_classes > 2:
        # Entropy of C classes reaches ln C: stretch the grid proportionally.
        scale = torch.tensor(float(model.config.head_classes)).log().item() / torch.tensor(2.0).log().item()
        values = tuple(v * scale for v in values)
    return [(v,) * p for v in values]
