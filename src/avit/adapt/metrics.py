"""Agreement of an adaptive model with its own full (nothing paused) computation.

The reference is the same model with nothing paused (:meth:`AdaptiveViT.forward_full`), so the numbers
measure only what pausing changes, not the model's accuracy. Per image:

* one sigmoid logit (saliency): binarise ``sigmoid ≥ 0.5`` (logit ≥ 0); **pixel agreement** = fraction of
  pixels whose binary label matches; **IoU** = |A ∩ F| / |A ∪ F| of the salient masks (1 when both are empty);
* several classes: argmax labels; pixel agreement as above; **IoU** = mean over the classes present in
  either map of the per-class IoU (the one rule: :func:`avit.evaluation.metrics.mean_iou`).

Rows report means over images, the mean active tokens after each pause point, and the **MAC-ideal
speedup** ``static MACs / mean adaptive MACs`` (:func:`avit.models.model_macs`; the static model is the
same ViT without pause points or heads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from avit.data import load_image, preprocess
from avit.errors import InputError
from avit.evaluation.metrics import per_image
from avit.models.config import AdaptiveViTConfig
from avit.models.macs import model_macs
from avit.models.vit import AdaptiveViT

#: Keys of every agreement row.
ROW_KEYS = ("thresholds", "tokens_kept", "pixel_agreement", "iou", "ideal_speedup")


def labels_of(logits: torch.Tensor) -> torch.Tensor:
    """Dense logits float ``[B, C, H, W]`` → int64 labels ``[B, H, W]`` (``logit ≥ 0`` for C = 1, else argmax)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] >= 0).long()
    return logits.argmax(dim=1)


def agreement(adaptive: torch.Tensor, full: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image pixel agreement and IoU of two label maps int ``[B, H, W]`` of a model with
    ``num_classes`` output classes (one sigmoid channel counts as 2), by the rule of
    :func:`avit.evaluation.metrics.mean_iou`.

    Returns:
        ``(pixel_agreement, iou)``, float64 ``[B]`` each.

    Raises:
        InputError: the maps differ in shape.
    """
    if adaptive.shape != full.shape:
        raise InputError(f"label maps differ in shape: {list(adaptive.shape)} vs {list(full.shape)}")
    pixel, iou = per_image(adaptive.numpy(), full.numpy(), num_classes)
    return torch.from_numpy(pixel), torch.from_numpy(iou)


def ideal_speedup(config: AdaptiveViTConfig, tokens_kept: Sequence[Sequence[int]]) -> float:
    """``static MACs / mean adaptive MACs`` over images whose per-pause-point counts are ``tokens_kept``."""
    static = model_macs(config.replace(pause_points=(), default_thresholds=()))["total"]
    if not len(config.pause_points):
        return 1.0
    adaptive = [model_macs(config, [int(k) for k in kept])["total"] for kept in tokens_kept]
    return static / float(np.mean(adaptive))


def load_images(model: AdaptiveViT, image_paths: Iterable[str | os.PathLike]) -> torch.Tensor:
    """Load and preprocess image files for ``model`` → float32 ``[B, 3, H, W]``. Raises :class:`InputError`."""
    paths = list(image_paths)
    if not paths:
        raise InputError("no images given")
    c = model.config
    return torch.from_numpy(np.stack([preprocess(load_image(p), c.img_size, c.mean, c.std) for p in paths]))


def _check_thresholds(model: AdaptiveViT, thresholds_list: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
    p = model.num_pause_points
    out = []
    for t in thresholds_list:
        try:
            values = tuple(float(v) for v in t)
        except TypeError as exc:
            raise InputError(f"each thresholds entry must be a sequence of {p} numbers, got {t!r}") from exc
        if len(values) != p or any(np.isnan(v) for v in values):
            raise InputError(f"each thresholds entry needs {p} non-NaN values (one per pause point), got {list(values)}")
        out.append(values)
    if not out:
        raise InputError("thresholds_list is empty")
    return out


@torch.no_grad()
def agreement_rows(
    model: AdaptiveViT,
    images: torch.Tensor,
    thresholds_list: Sequence[Sequence[float]],
    *,
    full_logits: torch.Tensor | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[dict]:
    """Agreement rows (keys :data:`ROW_KEYS`) of ``model`` on preprocessed ``images`` ``[B, 3, H, W]``.

    Images run one at a time (no padding, so tokens kept and MACs are per image). ``full_logits``
    (the nothing-paused logits of ``images``) may be passed to skip recomputing them.
    """
    thresholds_list = _check_thresholds(model, thresholds_list)
    model.eval()
    if full_logits is None:
        full_logits = torch.cat([model.forward_full(images[i : i + 1]).logits for i in range(images.shape[0])])
    full_labels = labels_of(full_logits)
    rows = []
    for thresholds in thresholds_list:
        t = torch.tensor(thresholds, dtype=torch.float32)
        labels, kept = [], []
        for i in range(images.shape[0]):
            logits, k = model(images[i : i + 1], t)
            labels.append(labels_of(logits))
            kept.append(k[0].tolist())
            if on_step is not None:
                on_step()
        pixel, iou = agreement(torch.cat(labels), full_labels, max(full_logits.shape[1], 2))
        rows.append(
            {
                "thresholds": list(thresholds),
                "tokens_kept": [float(np.mean([k[p] for k in kept])) for p in range(model.num_pause_points)],
                "pixel_agreement": float(pixel.mean()),
                "iou": float(iou.mean()),
                "ideal_speedup": ideal_speedup(model.config, kept),
                "min_pixel_agreement": float(pixel.min()),
            }
        )
    return rows


def evaluate_agreement(
    model: AdaptiveViT,
    image_paths: Iterable[str | os.PathLike],
    thresholds_list: Sequence[Sequence[float]],
) -> list[dict]:
    """Agreement of ``model`` at each thresholds setting with its own nothing-paused output on image files.

    Args:
        model: An adaptive ViT (any policy; ``thresholds`` are its per-pause-point values).
        image_paths: Image files (read with :func:`avit.data.load_image`, resized to the model's input).
        thresholds_list: Settings to evaluate, each one value per pause point.

    Returns:
        One dict per setting: ``thresholds`` (list), ``tokens_kept`` (mean active patch tokens after each
        pause point), ``pixel_agreement``, ``iou`` (means over images), ``ideal_speedup`` (MAC-ideal),
        ``min_pixel_agreement`` (worst image).

    Raises:
        InputError: no images, unreadable image, thresholds of the wrong length or NaN.
    """
    thresholds_list = _check_thresholds(model, thresholds_list)
    return agreement_rows(model, load_images(model, image_paths), thresholds_list)
