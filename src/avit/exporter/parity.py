"""Parity between PyTorch eager and an exported ONNX model, at thresholds that cannot flake.

The comparison itself is the shared harness (:mod:`avit.evaluation.parity`); this module adds what
needs PyTorch: the eager runner and the probes that read token scores off the model.

A token whose score lies within float rounding of a threshold may pause in one backend and not the
other (ONNX Runtime and PyTorch round differently by ~1e-7). :func:`probe_thresholds` therefore picks
the middle thresholds at the midpoint of a wide gap between the scores the tokens actually have at each
pause point, so a parity failure always means a real defect. ``acm`` models are probed on the gate's
predicted errors instead (:func:`probe_acm_thresholds`); ``dtop`` models are also checked at other
values of their ``dtop_k`` input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from avit.errors import ExportError
from avit.evaluation.parity import (
    DEFAULT_MIN_GAP,
    ParityRow,
    Runner,
    compare,
    failure_message,
    session_runner,
    threshold_settings,
)
from avit.models import AdaptiveViT, nothing_paused
from avit.ops import token_scores


def _gap_midpoint(scores: np.ndarray, quantile: float, min_gap: float = 1e-4) -> float:
    """A threshold near the ``quantile`` of ``scores`` at the midpoint of a gap wider than ``min_gap``."""
    s = np.unique(scores[np.isfinite(scores)])
    if s.size < 2:
        return float(s[0]) + 0.5 if s.size else 0.5
    gaps = np.diff(s)
    target = int(np.clip(round(quantile * (s.size - 1)), 0, s.size - 2))
    wide = np.flatnonzero(gaps > min_gap)
    if wide.size == 0:
        i = int(np.argmax(gaps))
    else:
        i = int(wide[np.argmin(np.abs(wide - target))])
    return float((s[i] + s[i + 1]) / 2)


@torch.no_grad()
def probe_thresholds(
    model: AdaptiveViT, images: torch.Tensor, quantiles: Sequence[float], min_gap: float = 1e-4
) -> torch.Tensor:
    """Thresholds pausing about ``quantiles[p]`` of the tokens reaching pause point ``p``, away from every score.

    Pause points are fixed one after another: point ``p``'s scores are observed with the thresholds
    already chosen for the earlier points (and nothing paused later).

    Args:
        model: An entropy/confidence-policy model (keep-ratio models need no probing).
        images: float ``[B, C, H, W]``.
        quantiles: One fraction per pause point.
        min_gap: Smallest gap between neighbouring scores that a threshold may sit in (the rounding
            difference between the backends compared must stay below half of it).

    Returns:
        float32 ``[P]``.
    """
    cfg = model.config
    if cfg.policy == "acm":
        return probe_acm_thresholds(model, images, quantiles, min_gap)
    score_mode = 1 if cfg.policy in ("confidence", "dtop") else 0
    thresholds = nothing_paused(cfg)
    captured: list[torch.Tensor] = []
    for p, q in enumerate(quantiles):
        handle = model.pause_heads[p].register_forward_hook(lambda mod, inp, out: captured.append(out[0]))
        try:
            captured.clear()
            model(images, thresholds)
        finally:
            handle.remove()
        # Padding slots repeat a real token's logits, so they add no new score values.
        scores = token_scores(captured[0], score_mode).flatten().numpy()
        thresholds[p] = _gap_midpoint(scores, q, min_gap)
    return thresholds


@torch.no_grad()
def probe_acm_thresholds(
    model: AdaptiveViT, images: torch.Tensor, quantiles: Sequence[float], min_gap: float = 1e-4, rounds: int = 6
) -> torch.Tensor:
    """:func:`probe_thresholds` for ``acm``: tolerances away from every gate error ``e_j`` (j >= 1) that the
    blocks of each segment predict *while running at that tolerance* (a segment's later blocks see the
    effect of its earlier ones, so the choice is re-checked until no error lies within ``min_gap / 2``)."""
    cfg = model.config
    thresholds = nothing_paused(cfg)
    stops = (*cfg.pause_points[1:], cfg.depth)
    for p, q in enumerate(quantiles):
        captured: list[torch.Tensor] = []
        blocks = [model.blocks[i] for i in range(cfg.pause_points[p], stops[p])]
        handles = [
            b.norm2.register_forward_hook(
                lambda mod, inp, out, b=b, captured=captured: captured.append(b.mlp.remaining_error(out)[..., 1:])
            )
            for b in blocks
        ]
        try:
            for _ in range(rounds):
                captured.clear()
                model(images, thresholds)
                errors = torch.cat([e.flatten() for e in captured]).numpy()
                if thresholds[p] > 0 and np.abs(errors - float(thresholds[p])).min() > min_gap / 2:
                    break
                thresholds[p] = _gap_midpoint(errors, q, min_gap)
        finally:
            for h in handles:
                h.remove()
    return thresholds


def torch_probe(model: AdaptiveViT, images: torch.Tensor, min_gap: float = DEFAULT_MIN_GAP):
    """The exporter's probe for :func:`avit.evaluation.parity.threshold_settings`: fraction of tokens to
    pause → ``[P]`` thresholds read off PyTorch's own token scores (:func:`probe_thresholds`); keep-ratio
    models keep ``1 − fraction`` of their tokens (nothing to probe)."""

    def probe(fraction: float) -> np.ndarray:
        if model.config.policy == "keep_ratio":
            return np.full(model.num_pause_points, 1.0 - fraction, np.float32)
        return probe_thresholds(model, images, [fraction] * model.num_pause_points, min_gap).numpy()

    return probe


def torch_runner(model: AdaptiveViT) -> Runner:
    """A parity runner (:data:`avit.evaluation.parity.Runner`) over PyTorch eager."""

    @torch.no_grad()
    def run(images: np.ndarray, thresholds: np.ndarray | None, dtop_k: int | None):
        t = None if thresholds is None else torch.from_numpy(np.asarray(thresholds, np.float32))
        k = None if dtop_k is None else torch.tensor(dtop_k)
        logits, kept = model(torch.from_numpy(images), t, k)
        return logits.numpy(), kept.numpy()

    return run


def check_parity(
    model: AdaptiveViT,
    onnx_path: str,
    *,
    images: np.ndarray | None = None,
    batches: Sequence[int] = (1, 3),
    atol: float = 1e-4,
    min_gap: float = DEFAULT_MIN_GAP,
    log: Callable[[str], None] | None = None,
) -> list[ParityRow]:
    """Compare PyTorch eager with ONNX Runtime (CPU) on ``onnx_path`` with the parity harness
    (:mod:`avit.evaluation.parity`): nothing paused, everything paused, pausing at the last point only
    and two thresholds probed from PyTorch's scores (``dtop`` models also at other ``dtop_k``), each at
    every batch size; logits must match to max |Δlogits| ≤ ``atol`` with equal token counts.

    Args:
        model: The model exported.
        onnx_path: The exported file.
        images: float32 ``[n >= max(batches), C, H, W]``; default seeded noise.
        batches: Batch sizes.
        atol: Largest allowed max |Δlogits|.
        min_gap: See :func:`probe_thresholds` (wider for an fp16 model compared with float32 PyTorch).
        log: One line per row.

    Raises:
        ExportError: any setting's logits differ by more than ``atol`` or its token counts differ.
    """
    from avit.metadata import ModelInfo
    from avit.runtime import AdaptiveSession  # the runtime is torch-free and imports nothing from here

    cfg = model.config
    if images is None:
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(max(batches), cfg.in_chans, *cfg.img_size, generator=gen).numpy()
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.shape[0] < max(batches):
        raise ExportError(f"parity check needs {max(batches)} images, got {images.shape[0]}")
    # an OpenVINO IR (.xml) is checked at f32: parity is the exported graph's, not bf16's rounding
    session = AdaptiveSession(onnx_path, inference_precision="f32" if str(onnx_path).lower().endswith(".xml") else None)
    info: ModelInfo = session.info
    model = model.eval().set_attention_impl("explicit")
    probe = torch_probe(model, torch.from_numpy(images[: max(batches)]), min_gap)
    settings = threshold_settings(info, probe=probe, default=False, last_only=True)
    rows = compare(session_runner(session), torch_runner(model), images, settings, batches, atol=atol, log=log)
    message = failure_message(rows, atol=atol)
    if message:
        raise ExportError(message)
    return rows
