"""Measure threshold settings on the real backend: quality against the reference and per-call latency.

:class:`BackendEvaluator` is the ``evaluate`` the search calls. For one setting it

1. runs every calibration batch once (quality pass): logits → quality against the reference outputs
   (or labels), tokens kept per image, and the first latency samples;
2. times ``repeats`` more passes over the batches (each call is one latency sample).

Settings that keep exactly the same number of tokens on every image at every pause point run exactly
the same computation (thresholds select nested token sets, so equal counts mean equal sets), so their
timing is shared: the second such setting skips step 2 and adds its samples to the first one's.

:meth:`BackendEvaluator.remeasure` times finalists interleaved (every round runs each batch with every
setting in turn), so slow drifts of a shared machine hit all of them alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from avit.calibration.search import Measurement
from avit.errors import InputError
from avit.evaluation.metrics import labels, mean_iou, pixel_agreement
from avit.runtime import AdaptiveSession

#: Quality metrics: agreement with the reference model's labels, or with given label maps.
METRICS = ("iou", "pixel", "top1")


def default_metric(logits_shape: Sequence[int]) -> str:
    """``"top1"`` for classification-shaped outputs (``H = W = 1``), else ``"iou"``."""
    return "top1" if tuple(logits_shape[2:]) == (1, 1) else "iou"


def quality(pred_logits: np.ndarray, ref_labels: np.ndarray, num_classes: int, metric: str) -> float:
    """Quality of ``pred_logits`` ``[n, C, H, W]`` against int labels ``[n, H, W]``, mean over images.

    ``iou``: per image the foreground IoU (one or two classes; 1 when both masks are empty) or the mean
    IoU over the classes present, as ``avit adapt`` reports it; ``pixel``: fraction of equal pixel labels;
    ``top1``: fraction of equal labels (the same number, named for classification).
    """
    pred = labels(pred_logits)
    if metric == "iou":
        return float(np.mean([mean_iou(p, r, max(num_classes, 2)) for p, r in zip(pred, ref_labels)]))
    if metric in ("pixel", "top1"):
        return pixel_agreement(pred, ref_labels)
    raise InputError(f"unknown quality metric {metric!r}; known: {', '.join(METRICS)}")


class BackendEvaluator:
    """``evaluate(thresholds) -> Measurement`` over an :class:`AdaptiveSession` and fixed images.

    Args:
        session: The adaptive model.
        images: float32 ``[n, C, H, W]`` preprocessed calibration images (``n >= 1``). When ``n`` is not
            a multiple of ``batch`` the last batch is filled up with the first images (they count once
            for quality).
        batch: Images per call.
        repeats: Timed passes over all batches after the quality pass.
        warmup: Untimed calls before the first measurement.
        metric: ``"iou"``, ``"pixel"`` or ``"top1"``; None = by output shape.
        targets: int ``[n, H, W]`` label maps to score against; None = agreement with the reference.
        reference_thresholds: The "nothing paused" setting whose outputs are the reference.
        reference: Another session (e.g. a static export) to take the reference outputs from instead.
        on_call: Called after every backend call (for progress bars).

    Raises:
        InputError: no images, or a bad metric / batch.
    """

    def __init__(
        self,
        session: AdaptiveSession,
        images: np.ndarray,
        batch: int,
        *,
        repeats: int = 2,
        warmup: int = 1,
        metric: str | None = None,
        targets: np.ndarray | None = None,
        reference_thresholds: Sequence[float] | None = None,
        reference: AdaptiveSession | None = None,
        on_call: Callable[[], None] | None = None,
    ) -> None:
        images = session.check_images(images)
        if batch < 1:
            raise InputError(f"batch must be >= 1, got {batch}")
        if repeats < 0:
            raise InputError(f"repeats must be >= 0, got {repeats}")
        self.session = session
        self.batch = int(batch)
        self.repeats = int(repeats)
        self.num_images = images.shape[0]
        pad = (-self.num_images) % self.batch
        order = list(range(self.num_images)) + [i % self.num_images for i in range(pad)]
        self.chunks = [images[order[i : i + self.batch]] for i in range(0, len(order), self.batch)]
        self.on_call = on_call
        self.calls = 0
        if reference_thresholds is None:
            reference_thresholds = [session.info.nothing_paused] * session.info.num_pause_points
        self.reference_thresholds = tuple(float(t) for t in reference_thresholds)
        for _ in range(max(warmup, 0)):
            self._call(self.chunks[0], self.reference_thresholds)
        ref_session = reference or session
        ref_logits = np.concatenate(
            [ref_session.run(c, None if reference else self.reference_thresholds).logits for c in self.chunks]
        )[: self.num_images]
        self.metric = metric or default_metric(ref_logits.shape)
        if self.metric not in METRICS:
            raise InputError(f"unknown quality metric {self.metric!r}; known: {', '.join(METRICS)}")
        self.num_classes = ref_logits.shape[1]
        if targets is not None:
            targets = np.asarray(targets)
            if targets.shape != (self.num_images, *ref_logits.shape[2:]):
                raise InputError(
                    f"label maps must be [{self.num_images}, {ref_logits.shape[2]}, {ref_logits.shape[3]}], got {list(targets.shape)}"
                )
            self.ref_labels = targets.astype(np.int64)
        else:
            self.ref_labels = labels(ref_logits)
        self.timings: dict[bytes, list[float]] = {}  # token-count signature -> latency samples
        self.timed_signatures: set[bytes] = set()  # signatures whose timing passes ran
        self.timed = 0  # settings whose timing passes ran (not shared)

    # ------------------------------------------------------------------ calls
    def _call(self, chunk: np.ndarray, thresholds: Sequence[float]):
        result = self.session.run(chunk, thresholds)
        self.calls += 1
        if self.on_call:
            self.on_call()
        return result

    def calls_per_setting(self) -> int:
        """Backend calls a new setting costs (quality pass + timing passes)."""
        return len(self.chunks) * (1 + self.repeats)

    # ------------------------------------------------------------------ evaluate
    def __call__(self, thresholds: Sequence[float], *, timed: bool = True) -> Measurement:
        """Quality pass, then timing unless an earlier setting ran the identical computation.

        ``timed=False``: the quality pass only (its calls are still the latency samples it returns).
        """
        t = tuple(float(x) for x in thresholds)
        results = [self._call(c, t) for c in self.chunks]
        logits = np.concatenate([r.logits for r in results])[: self.num_images]
        kept = np.concatenate([r.tokens_kept for r in results])
        signature = hashlib.sha1(np.ascontiguousarray(kept, dtype=np.int64).tobytes()).digest()
        samples = self.timings.setdefault(signature, [])
        samples.extend(r.latency_ms for r in results)
        if timed and signature not in self.timed_signatures:
            self.timed_signatures.add(signature)
            self.timed += 1
            for _ in range(self.repeats):
                samples.extend(self._call(c, t).latency_ms for c in self.chunks)
        return Measurement(
            thresholds=t,
            samples_ms=tuple(samples),
            quality=quality(logits, self.ref_labels, self.num_classes, self.metric),
            tokens_kept=tuple(float(k) for k in kept[: self.num_images].mean(axis=0)),
        )

    def remeasure(self, points: Sequence[Measurement], rounds: int) -> list[Measurement]:
        """Fresh latency samples for ``points``, interleaved: each round runs each batch with every setting.

        Quality and tokens kept are kept (they are deterministic); the samples are replaced.
        """
        samples: list[list[float]] = [[] for _ in points]
        for _ in range(max(rounds, 1)):
            for chunk in self.chunks:
                for i, m in enumerate(points):
                    samples[i].append(self._call(chunk, m.thresholds).latency_ms)
        return [
            Measurement(m.thresholds, tuple(s), m.quality, m.tokens_kept, m.knobs, remeasured=True)
            for m, s in zip(points, samples)
        ]
