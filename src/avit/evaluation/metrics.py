"""Agreement between an adaptive model's dense predictions and the full model's (NumPy).

Sigmoid outputs (one channel) are binarised at 0.5; softmax outputs use the argmax class.
"""

from __future__ import annotations

import numpy as np


def labels(logits: np.ndarray) -> np.ndarray:
    """int ``[B, H, W]`` labels of float ``[B, C, H, W]`` logits: ``logit >= 0`` (one channel) or argmax."""
    if logits.shape[1] == 1:
        return (logits[:, 0] >= 0).astype(np.int64)
    return logits.argmax(axis=1)


def pixel_agreement(pred: np.ndarray, ref: np.ndarray) -> float:
    """Fraction of pixels whose label equals the reference label (``[B, H, W]`` ints)."""
    return float((pred == ref).mean())


def mean_iou(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> float:
    """The one IoU rule of avit, over whatever ``pred`` / ``ref`` (int label maps of one shape) hold.

    * ``num_classes <= 2`` (saliency: one sigmoid channel, or two classes): the IoU of label 1, the
      salient mask; 1 when neither map has any;
    * more classes: the mean over the classes present in either map of the per-class IoU.
    """
    classes = [1] if num_classes <= 2 else np.union1d(np.unique(pred), np.unique(ref)).tolist()
    ious = []
    for c in classes:
        a, b = pred == c, ref == c
        union = np.logical_or(a, b).sum()
        ious.append(1.0 if union == 0 else np.logical_and(a, b).sum() / union)
    return float(np.mean(ious)) if ious else 1.0


def probabilities(logits: np.ndarray) -> np.ndarray:
    """float ``[B, C, H, W]`` logits → probabilities: sigmoid (one channel) or softmax over C."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def probability_mae(pred_logits: np.ndarray, ref_logits: np.ndarray) -> float:
    """Mean absolute difference of the predicted probability maps (the standard saliency MAE, in [0, 1]).

    One channel: mean ``|σ(pred) − σ(ref)|`` over pixels; several: half the L1 distance of the per-pixel
    class distributions (total variation), averaged over pixels.
    """
    diff = np.abs(probabilities(pred_logits) - probabilities(ref_logits))
    return float(diff.mean() if pred_logits.shape[1] == 1 else diff.sum(axis=1).mean() / 2)


def per_image(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel agreement and IoU (:func:`mean_iou`'s rule) of each image: int ``[B, H, W]`` label maps →
    ``(pixel, iou)``, float64 ``[B]`` each."""
    pixel = np.array([pixel_agreement(p, r) for p, r in zip(pred, ref)], dtype=np.float64)
    iou = np.array([mean_iou(p, r, num_classes) for p, r in zip(pred, ref)], dtype=np.float64)
    return pixel, iou


def agreement(pred_logits: np.ndarray, ref_logits: np.ndarray) -> dict[str, float]:
    """``{"pixel_agreement", "iou", "mae"}`` of predictions vs. the reference (both float ``[B, C, H, W]`` logits).

    ``mae``: :func:`probability_mae`.
    """
    num_classes = max(ref_logits.shape[1], 2)
    p, r = labels(pred_logits), labels(ref_logits)
    return {"pixel_agreement": pixel_agreement(p, r), "iou": mean_iou(p, r, num_classes),
            "mae": probability_mae(pred_logits, ref_logits)}
