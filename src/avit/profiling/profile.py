"""``avit profile``: latency, throughput, tokens and MACs per threshold setting and batch size, measured.

Protocol, per batch size: the images are cut into batches (the last one filled up with the first images);
after ``warmup`` untimed rounds, each round runs every batch through the reference and through the model
at every setting, interleaved batch by batch, so that a noisy machine's slow moments hit all settings
alike. Rounds repeat until ``iters`` rounds or ``duration`` seconds (whichever comes first; at least two
unless ``iters`` is 1).
A setting's latency statistics are over its calls (one call = one batch); its speedup is the median over
rounds of ``reference round time / its round time``.

The reference row is the static export when one is given (``static=``), else the adaptive model at its
nothing-paused thresholds; agreement is measured against the reference's outputs. MACs: ``executed`` counts
what a padded batch really computes (every image padded to the batch's largest token count after each
pause point), ``ideal`` what the images' own token counts need (:func:`avit.models.model_macs`).

Per-stage times come from ONNX Runtime's profiler in a separate profiled session
(:mod:`avit.profiling.ort_profiler`); other backends report none.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avit.errors import InputError
from avit.models.config import AdaptiveViTConfig
from avit.models.macs import model_macs
from avit.evaluation.latency import latency_stats
from avit.evaluation.metrics import agreement
from avit.runtime import AdaptiveSession


@dataclasses.dataclass
class ProfileRow:
    """One setting at one batch size.

    Attributes:
        batch: Images per call.
        label: Setting name.
        thresholds: ``[P]`` thresholds; None for the static model.
        reference: True for the reference row.
        latency_ms: Per-call latency: mean, p50, p90, p95, p99, n (samples).
        throughput: Images per second (``batch / mean latency``).
        tokens_kept: Mean active tokens after each pause point, over the images.
        gmac_executed: GMAC per image as executed (padded to the batch's largest token counts).
        gmac_ideal: GMAC per image for its own token counts.
        speedup: Median per-round ``reference / this`` time ratio.
        pixel_agreement, iou: Agreement with the reference's outputs.
        stages_ms: Stage → ms per call from the backend profiler (None if not available).
    """

    batch: int
    label: str
    thresholds: list[float] | None
    reference: bool
    latency_ms: dict[str, float]
    throughput: float
    tokens_kept: list[float]
    gmac_executed: float
    gmac_ideal: float
    speedup: float
    pixel_agreement: float
    iou: float
    stages_ms: dict[str, float] | None = None


@dataclasses.dataclass
class ProfileReport:
    """Everything ``avit profile`` measured."""

    model: str
    static: str | None
    reference: str
    backend: str
    providers: list[str]
    images: list[str]
    rows: list[ProfileRow]
    rounds: dict[int, int]
    seconds: float
    stages_note: str
    inference_precision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``avit profile --json``)."""
        return {
            "format": "avit-profile",
            "version": 1,
            "model": self.model,
            "static": self.static,
            "reference": self.reference,
            "backend": self.backend,
            "providers": self.providers,
            "inference_precision": self.inference_precision,
            "images": self.images,
            "rounds": {str(b): r for b, r in self.rounds.items()},
            "seconds": round(self.seconds, 3),
            "stages_note": self.stages_note,
            "rows": [dataclasses.asdict(r) for r in self.rows],
        }


def default_settings(session: AdaptiveSession) -> list[tuple[str, list[float]]]:
    """Settings to profile when none are given: the calibration presets if any, else a knob grid.

    The grid is the diagonal ``u = 0.25, 0.5, 0.75`` of :class:`~avit.evaluation.knobs.KnobSpace`
    (e.g. entropy thresholds 0.25, 0.5, 0.75 × ln C), plus the model's default thresholds.
    """
    from avit.evaluation.knobs import KnobSpace

    if session.presets:
        ordered = sorted(session.presets.values(), key=lambda p: -p.latency_ms)
        return [(f"preset {p.name}", list(p.thresholds)) for p in ordered]
    space = KnobSpace.for_model(session.info)
    p = session.info.num_pause_points
    settings = [(f"u={u:g}", list(space.thresholds([u] * p))) for u in (0.25, 0.5, 0.75)]
    defaults = list(session.info.default_thresholds)
    if defaults and defaults != list(space.nothing_paused):
        settings.insert(0, ("default", defaults))
    return settings


def _chunks(images: np.ndarray, batch: int) -> tuple[list[np.ndarray], int]:
    n = images.shape[0]
    pad = (-n) % batch
    order = list(range(n)) + [i % n for i in range(pad)]
    return [images[order[i : i + batch]] for i in range(0, len(order), batch)], n


def profile(
    model: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    *,
    static: str | os.PathLike | None = None,
    batches: Sequence[int] = (1,),
    settings: Sequence[tuple[str, Sequence[float]]] | None = None,
    presets: Sequence[str] = (),
    iters: int | None = 10,
    duration: float | None = None,
    warmup: int = 1,
    stages: bool = True,
    stage_repeats: int = 2,
    calibration: str | os.PathLike | bool | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    backend: str | None = None,
    inference_precision: str | None = None,
    progress: Callable[[str, float, float], None] | None = None,
) -> ProfileReport:
    """Measure ``model`` on ``images`` at every setting and batch size (see the module docstring).

    Args:
        model: Adaptive ``.onnx`` (or engine) model.
        images: Image files (token counts depend on content: use real images).
        static: Static export of the same weights for the reference row; None = nothing-paused thresholds.
        batches: Batch sizes.
        settings: ``(label, thresholds)``; None (and no ``presets``) = :func:`default_settings`.
        presets: Names of calibration presets to profile after ``settings`` (labelled "preset NAME").
        iters: Timed rounds per batch size (None: until ``duration``).
        duration: Seconds per batch size for the timed rounds (None: ``iters`` rounds).
        warmup: Untimed rounds first.
        stages: Also time each stage with the backend's profiler (ONNX Runtime only).
        stage_repeats: Profiled calls per setting and batch size.
        calibration: Calibration file for presets (see :class:`AdaptiveSession`).
        providers, threads: ONNX Runtime execution providers and intra-op (OpenVINO: inference) threads.
        backend, inference_precision: See :class:`~avit.runtime.AdaptiveSession` (e.g. ``"openvino"``,
            ``"bf16"``); ``static`` runs on the same backend and precision.
        progress: ``progress(description, done, total)``.

    Raises:
        InputError: bad arguments or images. ArtifactError: unusable model files.
    """
    t_start = time.perf_counter()
    batches, paths = _check_arguments(images, batches, iters, duration, warmup)
    say = progress or (lambda desc, done, total: None)
    options = {"backend": backend, "inference_precision": inference_precision}
    session = AdaptiveSession(model, providers, intra_op_threads=threads, calibration=calibration, **options)
    info = session.info
    if info.num_pause_points == 0:
        raise InputError(f"{model} has no pause points (a static export); pass it as --static and profile the adaptive model")
    ref_session = AdaptiveSession(static, providers, intra_op_threads=threads, calibration=False, **options) if static else None
    if ref_session is not None:
        if ref_session.info.num_pause_points:
            raise InputError(f"--static {static} has pause points; give the static export (avit export --static)")
        if ref_session.info.input_size != info.input_size:
            raise InputError(f"--static {static} takes {list(ref_session.info.input_size)} images, the model {list(info.input_size)}")
    entries, reference_desc = _entries(session, ref_session, static, settings, presets)

    x = session.load_images(paths)
    rows: list[ProfileRow] = []
    rounds_done: dict[int, int] = {}
    for b in batches:
        batch_rows, rounds_done[b] = _profile_batch(entries, x, b, warmup, iters, duration, say, session, ref_session)
        rows += batch_rows

    note = _add_stages(rows, session, ref_session, x, stage_repeats, providers, threads, say) if stages else ""
    say("done", 1.0, 1.0)
    return ProfileReport(
        model=str(model),
        static=str(static) if static else None,
        reference=reference_desc,
        backend=session.backend.name,
        providers=list(getattr(session.backend, "providers", [])),
        inference_precision=getattr(session.backend, "inference_precision", None),
        images=[p.name for p in paths],
        rows=rows,
        rounds=rounds_done,
        seconds=time.perf_counter() - t_start,
        stages_note=note,
    )


def _check_arguments(images, batches, iters, duration, warmup) -> tuple[list[int], list[Path]]:
    """Sorted distinct batch sizes and the image paths. Raises :class:`InputError` (one line) on bad values."""
    if iters is None and duration is None:
        raise InputError("give --rounds or --duration-s")
    if (iters is not None and iters < 1) or (duration is not None and duration <= 0) or warmup < 0:
        raise InputError("--rounds must be >= 1, --duration-s > 0 and --warmup >= 0")
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise InputError(f"batch sizes must be >= 1, got {list(batches)}")
    paths = [Path(p) for p in images]
    if not paths:
        raise InputError("no images to profile on")
    return batches, paths


def _entries(session, ref_session, static, settings, presets):
    """What is timed, reference first: ``([(label, session, thresholds or None, is_reference)], reference
    description)``. The static model (if any) is the reference; else the adaptive model with nothing paused."""
    info = session.info
    nothing = [info.nothing_paused] * info.num_pause_points
    named = list(settings or []) + [(f"preset {name}", list(session.preset(name).thresholds)) for name in presets]
    chosen = [(label, [float(str(v)) for v in session.thresholds(t)]) for label, t in (named or default_settings(session))]
    entries: list[tuple[str, AdaptiveSession, list[float] | None, bool]] = []
    if ref_session is not None:
        reference_desc = f"static model {Path(static).name}"
        entries.append((f"static ({Path(static).name})", ref_session, None, True))
        entries.append(("nothing paused", session, nothing, False))
    else:
        reference_desc = "the adaptive model at its nothing-paused thresholds (no --static model given)"
        entries.append(("nothing paused", session, nothing, True))
    entries += [(label, session, t, False) for label, t in chosen if t != nothing]
    return entries, reference_desc


def _profile_batch(entries, x, b, warmup, iters, duration, say, session, ref_session) -> tuple[list[ProfileRow], int]:
    """Every entry at batch size ``b``: outputs (agreement, tokens, MACs) once, then the interleaved timed
    rounds. Returns ``(rows, rounds timed)``."""
    info = session.info
    cfg = AdaptiveViTConfig.from_dict(info.config)
    static_cfg = AdaptiveViTConfig.from_dict(ref_session.info.config) if ref_session else None
    chunks, n = _chunks(x, b)
    outputs = []
    for _, sess, t, _ in entries:
        results = [sess.run(c, t) for c in chunks]
        outputs.append((np.concatenate([r.logits for r in results])[:n], [r.tokens_kept for r in results]))
    ref_logits = outputs[0][0]
    samples, round_totals, done = _timed_rounds(entries, chunks, b, warmup, iters, duration, say)
    ref_rounds = np.asarray(round_totals[0])
    rows = []
    for i, (label, _, t, is_ref) in enumerate(entries):
        logits, kept_chunks = outputs[i]
        agree = agreement(logits, ref_logits)
        stats = latency_stats(samples[i])
        if t is None:  # static model
            macs = float(model_macs(static_cfg)["total"])
            executed = ideal = macs
            kept_mean = [float(info.num_patches)] * info.num_pause_points
        else:
            per_call = [k for k in kept_chunks]
            executed = float(np.mean([model_macs(cfg, k.max(axis=0).tolist())["total"] for k in per_call]))
            kept_all = np.concatenate(per_call)[:n]
            ideal = float(np.mean([model_macs(cfg, k.tolist())["total"] for k in kept_all]))
            kept_mean = kept_all.mean(axis=0).tolist()
        rows.append(
            ProfileRow(
                batch=b,
                label=label,
                thresholds=t,
                reference=is_ref,
                latency_ms=stats,
                throughput=b * 1e3 / stats["mean"],
                tokens_kept=kept_mean,
                gmac_executed=executed / 1e9,
                gmac_ideal=ideal / 1e9,
                speedup=float(np.median(ref_rounds / np.asarray(round_totals[i]))),
                pixel_agreement=agree["pixel_agreement"],
                iou=agree["iou"],
            )
        )
    return rows, done


def _timed_rounds(entries, chunks, batch, warmup, iters, duration, say):
    """Interleaved timing: each round runs every chunk at every entry in turn, so all entries see the same
    machine load. Returns ``(samples, round_totals, rounds)``: per entry the ms of every call and of every
    round; rounds stop at ``iters`` or after ``duration`` seconds (at least 2)."""
    samples = [[] for _ in entries]
    round_totals = [[] for _ in entries]
    t0 = time.perf_counter()
    r = done = 0
    while True:
        timed = r >= warmup
        totals = [0.0] * len(entries)
        for c in chunks:
            for i, (_, sess, t, _) in enumerate(entries):
                ms = sess.run(c, t).latency_ms
                totals[i] += ms
                if timed:
                    samples[i].append(ms)
        r += 1
        if not timed:
            t0 = time.perf_counter()
            continue
        done += 1
        for i in range(len(entries)):
            round_totals[i].append(totals[i])
        elapsed = time.perf_counter() - t0
        frac = max(done / iters if iters else 0.0, elapsed / duration if duration else 0.0)
        say(f"batch {batch}: {done} rounds", min(frac, 1.0), 1.0)
        if frac >= 1.0 and done >= min(2, iters or 2):
            return samples, round_totals, done


def _add_stages(rows, session, ref_session, x, stage_repeats, providers, threads, say) -> str:
    """Per-stage kernel time (ONNX Runtime's profiler) into ``row.stages_ms``; returns the note to report."""
    if session.backend.name != "onnxruntime":
        return f"per-stage timing is not exposed by the {session.backend.name} backend"
    from avit.profiling.ort_profiler import profile_stages

    say("stages (ONNX Runtime profiler)", 0.0, 1.0)
    for static_rows in (True, False):
        group = [row for row in rows if (row.thresholds is None) == static_rows]
        if not group:
            continue
        sess = ref_session if static_rows else session
        feeds = []
        for row in group:
            feed = {"images": _chunks(x, row.batch)[0][0]}
            if row.thresholds is not None:
                feed["pause_thresholds"] = np.asarray(row.thresholds, dtype=np.float32)
            feeds.append(feed)
        times = profile_stages(sess.path, sess.info, feeds, repeats=stage_repeats, providers=providers, threads=threads)
        for row, stage_ms in zip(group, times):
            row.stages_ms = stage_ms
    return (
        f"stages: ONNX Runtime profiler kernel times, a separate session, {stage_repeats} calls per setting "
        "on the first batch (profiler overhead included)"
    )
