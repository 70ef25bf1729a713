"""Adaptive vs. static export, measured in one interleaved run: latency, speedup, MACs, agreement.

Protocol: after warm-up, each round runs every image through the static model and through the adaptive
model at every setting, in the same order; a setting's latency is the median over rounds of its
per-round time, and its speedup is the median over rounds of ``static time / adaptive time`` in that
round, so slow drifts of a noisy machine cancel. Agreement is against the static (full) model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from avit.evaluation.metrics import agreement
from avit.runtime import AdaptiveSession


@dataclasses.dataclass
class CompareRow:
    """One threshold setting compared with the static model.

    Attributes:
        label: Setting name.
        thresholds: ``[P]`` thresholds / keep ratios.
        tokens_kept: Mean active patch tokens after each pause point, over the images.
        latency_ms: Median per-round time for all images divided by the image count (ms per image).
        static_latency_ms: Same for the static model (ms per image).
        speedup: Median per-round ``static / adaptive`` time ratio.
        ideal_speedup: ``static MACs / adaptive MACs`` (mean over images).
        gmac: Mean adaptive GMAC per image.
        pixel_agreement, iou: Agreement with the static model's labels.
        mae: Mean absolute difference of the probability maps from the static model's.
    """

    label: str
    thresholds: list[float]
    tokens_kept: list[float]
    latency_ms: float
    static_latency_ms: float
    speedup: float
    ideal_speedup: float
    gmac: float
    pixel_agreement: float
    iou: float
    mae: float = float("nan")

    @property
    def efficiency(self) -> float:
        """Realised / MAC-ideal speedup."""
        return self.speedup / self.ideal_speedup if self.ideal_speedup else float("nan")


def compare_settings(
    adaptive: AdaptiveSession,
    static: AdaptiveSession,
    images: np.ndarray,
    settings: Sequence[tuple],
    *,
    rounds: int = 7,
    warmup: int = 1,
    batch: int = 1,
    macs: Callable[[Sequence[int]], float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[CompareRow]:
    """Measure every setting against the static model in one interleaved run.

    Args:
        adaptive, static: Sessions over the adaptive and the static export of the same weights.
        images: float32 ``[n, C, H, W]`` preprocessed images (``n`` divisible by ``batch``).
        settings: ``(label, thresholds)`` pairs, or ``(label, thresholds, session)`` triples to measure
            another adaptive model (e.g. a fine-tuned one) in the same interleaved run; agreement and
            speedup are always against ``static``.
        rounds: Timed rounds (median over them).
        warmup: Untimed rounds first.
        batch: Images per call.
        macs: ``tokens_kept -> MACs`` of one image (e.g. ``lambda k: model_macs(cfg, k)["total"]``); the
            ideal speedup is reported as NaN without it.
        progress: Called with ``(done, total)`` after each round.

    Returns:
        One :class:`CompareRow` per setting, in order.
    """
    n = images.shape[0]
    if n % batch:
        raise ValueError(f"{n} images do not split into batches of {batch}")
    chunks = [images[i : i + batch] for i in range(0, n, batch)]
    static_logits = np.concatenate([static.run(c).logits for c in chunks])
    entries = [(s[0], s[1], s[2] if len(s) > 2 else adaptive) for s in settings]
    outputs = []
    for _, t, session in entries:
        results = [session.run(c, t) for c in chunks]
        outputs.append(
            (np.concatenate([r.logits for r in results]), np.concatenate([r.tokens_kept for r in results]))
        )
    times = np.zeros((rounds, len(settings) + 1))
    for r in range(warmup + rounds):
        row = np.zeros(len(settings) + 1)
        for c in chunks:
            row[0] += static.run(c).latency_ms
            for s, (_, t, session) in enumerate(entries):
                row[s + 1] += session.run(c, t).latency_ms
        if r >= warmup:
            times[r - warmup] = row
        if progress:
            progress(r + 1, warmup + rounds)
    static_ms = float(np.median(times[:, 0])) / n
    static_macs = macs([]) if macs else float("nan")
    rows = []
    for s, (label, t, _) in enumerate(entries):
        logits, kept = outputs[s]
        agree = agreement(logits, static_logits)
        if macs:
            per_image = [macs(list(k)) for k in kept.tolist()]
            gmac = float(np.mean(per_image)) / 1e9
            ideal = static_macs / float(np.mean(per_image))
        else:
            gmac = ideal = float("nan")
        rows.append(
            CompareRow(
                label=label,
                thresholds=[float(x) for x in t],
                tokens_kept=kept.mean(axis=0).tolist(),
                latency_ms=float(np.median(times[:, s + 1])) / n,
                static_latency_ms=static_ms,
                speedup=float(np.median(times[:, 0] / times[:, s + 1])),
                ideal_speedup=ideal,
                gmac=gmac,
                **agree,
            )
        )
    return rows
