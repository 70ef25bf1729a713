"""``calibrate``: thresholds for a latency target, measured on the real backend, with a held-out check.

Steps (each measured with :class:`~avit.calibration.evaluate.BackendEvaluator` on an
:class:`~avit.runtime.AdaptiveSession`, i.e. on the backend that will run the model):

1. search (:class:`~avit.calibration.search.ThresholdSearch`) on the calibration images;
2. re-measure, interleaved, the reference (nothing paused), the fastest setting and the preset
   candidates (the least work — MACs of the tokens kept — at each quality floor), then walk down the
   Pareto front re-measuring until the best setting meeting the target is known
   (:func:`~avit.calibration.search.select_final`); only re-measured numbers decide;
3. held-out check: the chosen thresholds and the reference, re-measured interleaved on images not used
   for calibration; it passes when the chosen setting's percentile latency is within
   ``target · (1 + tolerance)``. The reference keeps every token, so its latency does not depend on the
   images: the ratio of its median latency during the check to that during calibration measures how much
   slower or faster the machine is now (other load), and the check also reports the chosen latency
   corrected by that ratio (informative; the pass/fail verdict uses the raw number);
4. write ``<model>.calib.json`` (Pareto front, chosen setting, presets, held-out check) and the plot.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avit import __version__
from avit.calibration.evaluate import BackendEvaluator
from avit.metadata.calibration import calibration_path, file_sha256, save_calibration
from avit.metadata.calibration_schema import FORMAT, VERSION
from avit.calibration.choice import PRESET_FLOORS, monotone_presets, pick_presets, quality_warning, select_final
from avit.calibration.search import Measurement, ThresholdSearch, pareto_front
from avit.evaluation.knobs import KnobSpace
from avit.errors import InputError
from avit.models.config import AdaptiveViTConfig
from avit.models.macs import model_macs
from avit.evaluation.latency import percentile_key
from avit.runtime import AdaptiveSession
from avit.runtime.machine import cpu_record

#: ``progress(stage, done, total)``; ``total`` may be an estimate.
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class HeldoutCheck:
    """The chosen thresholds re-measured on images not used for calibration."""

    images: list[str]
    thresholds: tuple[float, ...]
    latency: Measurement
    reference: Measurement
    target_ms: float
    percentile: float
    tolerance: float
    calibration_reference_ms: float | None = None

    @property
    def latency_ms(self) -> float:
        return self.latency.latency(self.percentile)

    @property
    def load_factor(self) -> float | None:
        """Median reference latency now / during calibration (> 1: the machine is slower now).

        Medians, not the target percentile: a tail of a few samples is too noisy to measure the machine by.
        """
        if not self.calibration_reference_ms:
            return None
        return self.reference.latency(50) / self.calibration_reference_ms

    @property
    def corrected_ms(self) -> float | None:
        """:attr:`latency_ms` divided by :attr:`load_factor`."""
        factor = self.load_factor
        return None if factor is None else self.latency_ms / factor

    @property
    def limit_ms(self) -> float:
        """``target · (1 + tolerance)``."""
        return self.target_ms * (1 + self.tolerance)

    @property
    def passed(self) -> bool:
        return self.latency_ms <= self.limit_ms

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "thresholds": list(self.thresholds),
            "latency_ms": self.latency.stats([self.percentile]),
            "reference_latency_ms": self.reference.stats([self.percentile]),
            "quality": self.latency.quality,
            "target_ms": self.target_ms,
            "tolerance": self.tolerance,
            "passed": self.passed,
            "load_factor": self.load_factor,
            "load_corrected_ms": self.corrected_ms,
        }


@dataclasses.dataclass
class CalibrationReport:
    """What :func:`calibrate` did and wrote."""

    path: Path
    plot: Path | None
    data: dict[str, Any]
    target_ms: float
    percentile: float
    batch: int
    chosen: Measurement
    meets_target: bool
    reference: Measurement
    fastest: Measurement
    front: list[Measurement]
    presets: dict[str, Measurement]
    heldout: HeldoutCheck | None
    evaluations: int
    timed: int
    search_seconds: float
    seconds: float


def _point(m: Measurement, front: set, q: float) -> dict[str, Any]:
    return {
        "thresholds": list(m.thresholds),
        "knobs": list(m.knobs),
        "latency_ms": m.stats([q]),
        "quality": m.quality,
        "tokens_kept": list(m.tokens_kept),
        "remeasured": m.remeasured,
        "pareto": m.thresholds in front,
    }


def load_label_maps(paths: Sequence[Path], masks_dir: Path, size: tuple[int, int], num_classes: int) -> np.ndarray:
    """int ``[n, H, W]`` labels from ``masks_dir/<image stem>.png`` (resized nearest to ``size``).

    One-output (sigmoid) models: grey > 127 is foreground (1). Several classes: the pixel value is the class.

    Raises:
        InputError: a mask is missing or unreadable.
    """
    from avit.data import load_image

    out = []
    for p in paths:
        candidates = [masks_dir / f"{p.stem}{ext}" for ext in (".png", ".bmp", ".tif", ".tiff")]
        mask_path = next((c for c in candidates if c.is_file()), None)
        if mask_path is None:
            raise InputError(f"no mask for {p.name} in {masks_dir} (expected {p.stem}.png)")
        grey = load_image(mask_path)[..., 0]
        from PIL import Image

        resized = np.asarray(Image.fromarray(grey).resize((size[1], size[0]), Image.NEAREST))
        out.append((resized > 127).astype(np.int64) if num_classes == 1 else resized.astype(np.int64))
    return np.stack(out)


#: Fractions of active tokens the calibration times besides its search (the SLO ladder).
LADDER = (0.9, 0.75, 0.6, 0.45, 0.3, 0.15)


def calibrate(
    model: str | os.PathLike,
    target_ms: float,
    images: Sequence[str | os.PathLike],
    *,
    heldout: Sequence[str | os.PathLike] = (),
    batch: int = 1,
    percentile: float = 95.0,
    output: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    max_evals: int = 40,
    repeats: int = 2,
    final_rounds: int = 3,
    metric: str | None = None,
    masks: str | os.PathLike | None = None,
    tolerance: float = 0.05,
    floors: dict[str, float] | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    backend: str | None = None,
    inference_precision: str | None = None,
    progress: Progress | None = None,
    ladder: Sequence[float] = LADDER,
) -> CalibrationReport:
    """Find the best-quality thresholds meeting ``target_ms`` at ``percentile`` and batch ``batch``.

    Args:
        model: Adaptive ``.onnx`` model.
        target_ms: Latency target of one call of ``batch`` images, ms.
        images: Calibration image files.
        heldout: Image files for the held-out check (none: no check).
        batch: Images per call.
        percentile: Which percentile of the per-call latency must meet the target.
        output: Calibration file to write; default ``<model>.calib.json``.
        plot: Pareto-front PNG to write; None = no plot.
        max_evals: Most settings the search measures.
        repeats: Timed passes per setting in the search (after its quality pass).
        final_rounds: Interleaved rounds of the final and held-out re-measurements.
        metric: ``iou`` / ``pixel`` / ``top1``; None = by output shape.
        masks: Folder of label maps (``<image stem>.png``): score against them instead of agreement.
        tolerance: Held-out check passes when its latency ≤ ``target · (1 + tolerance)``.
        floors: Preset quality floors (default :data:`~avit.calibration.search.PRESET_FLOORS`).
        providers, threads: ONNX Runtime execution providers and intra-op (OpenVINO: inference) threads.
        backend, inference_precision: See :class:`~avit.runtime.AdaptiveSession` (e.g. ``"openvino"``,
            ``"bf16"``): latency is a property of the backend, so calibrate on the one you deploy.
        progress: ``progress(stage, done, total)``.
        ladder: Fractions of active tokens to find and time along the diagonal besides the search (the
            model's default thresholds are always timed too), so that the file's Pareto front spans the knob
            from nothing paused to everything paused for serving under an SLO (:mod:`avit.runtime.slo`).
            ``()``: none.

    Raises:
        InputError: bad arguments or images. ArtifactError: not an adaptive avit model.
    """
    t_start = time.perf_counter()
    model = Path(model)
    _check_arguments(target_ms, percentile, batch, max_evals, final_rounds, repeats, tolerance)
    images = [Path(p) for p in images]
    heldout = [Path(p) for p in heldout]
    if not images:
        raise InputError("no calibration images")
    session = AdaptiveSession(model, providers, intra_op_threads=threads, calibration=False, backend=backend,
                              inference_precision=inference_precision)
    info = session.info
    space, evaluator = _evaluator(session, model, images, masks, batch, repeats, metric)
    say = progress or (lambda stage, done, total: None)
    q = percentile
    floors = floors or PRESET_FLOORS

    # 1. search; 2. re-measure (interleaved) the finalists and pick the presets
    result, search_seconds = _search(evaluator, space, target_ms, q, max_evals, floors, say,
                                     anchors=[space.knobs(evaluator.session.thresholds(None).tolist())], ladder=ladder)
    final = _finalists(result, evaluator, info, target_ms, q, floors, final_rounds, say)

    # 3. held-out check
    check = None
    if heldout:
        check = _heldout_check(session, heldout, masks, evaluator.metric, space, final.reference, final.chosen,
                               target_ms, q, tolerance, batch, final_rounds, say)

    # 4. write
    out_path = Path(output) if output else calibration_path(model)
    front_keys = {m.thresholds for m in final.front}
    data = _document(
        model, info, session, threads, images, batch, q, repeats, final_rounds, evaluator, masks, space, target_ms,
        final.meets, result, search_seconds, max_evals, final.points, front_keys, final.chosen, check, final.presets,
        floors, same_as=final.same_as, warnings=final.warnings,
    )
    save_calibration(out_path, data)
    plot_path = None
    if plot is not None:
        from avit.calibration.plot import plot_pareto

        plot_path = plot_pareto(data, plot)
    return CalibrationReport(
        path=out_path, plot=plot_path, data=data, target_ms=float(target_ms), percentile=q, batch=batch,
        chosen=final.chosen, meets_target=final.meets, reference=final.reference, fastest=final.fastest,
        front=final.front, presets=final.presets, heldout=check, evaluations=result.evaluations,
        timed=evaluator.timed, search_seconds=search_seconds, seconds=time.perf_counter() - t_start,
    )


def _evaluator(session, model, images, masks, batch, repeats, metric):
    """The knob space and the evaluator (quality and timing of a setting on the calibration images).

    Raises:
        InputError: a model without pause points.
    """
    info = session.info
    if info.num_pause_points == 0:
        raise InputError(f"{model} has no pause points (a static export): nothing to calibrate")
    space = KnobSpace.for_model(info)
    x = session.load_images(images)
    targets = load_label_maps(images, Path(masks), info.input_size, int(info.config["num_classes"])) if masks else None
    evaluator = BackendEvaluator(
        session, x, batch, repeats=repeats, metric=metric, targets=targets, reference_thresholds=space.nothing_paused
    )
    return space, evaluator


def _check_arguments(target_ms, percentile, batch, max_evals, final_rounds, repeats, tolerance) -> None:
    """Raise :class:`InputError` (one line, naming the option) for out-of-range :func:`calibrate` arguments."""
    if not (target_ms > 0) or not np.isfinite(target_ms):
        raise InputError(f"--target-latency-ms must be a positive number, got {target_ms}")
    if not (0 < percentile <= 100):
        raise InputError(f"--percentile must lie in (0, 100], got {percentile}")
    if batch < 1 or max_evals < 3 or final_rounds < 1 or repeats < 0 or tolerance < 0:
        raise InputError("batch >= 1, max_evals >= 3, final_rounds >= 1, repeats >= 0 and tolerance >= 0 are required")


def _search(evaluator, space, target_ms, q, max_evals, floors, say, *, anchors=(), ladder=()):
    """Step 1: the threshold search (quality first, timing where it can matter), plus the timed ``anchors``
    (the model's defaults) and ``ladder`` (token fractions) of the SLO front. Returns ``(result, seconds)``."""
    total_calls = max_evals * evaluator.calls_per_setting()
    evaluator.on_call = lambda: say("search", evaluator.calls, total_calls)
    search = ThresholdSearch(
        evaluator, space, target_ms, percentile=q, max_evals=max_evals, floors=tuple(floors.values()),
        quick=lambda t: evaluator(t, timed=False),
        anchors=anchors, ladder=ladder,
    )
    t0 = time.perf_counter()
    result = search.run()
    seconds = time.perf_counter() - t0
    say("search", total_calls, total_calls)
    return result, seconds


@dataclasses.dataclass
class _Final:
    """Step 2's outcome: re-measured settings, the choice and the presets."""

    chosen: Measurement
    meets: bool
    points: list[Measurement]
    reference: Measurement
    fastest: Measurement
    front: list[Measurement]
    presets: dict[str, Measurement]
    same_as: dict[str, str]
    warnings: dict[str, str]


def _finalists(result, evaluator, info, target_ms, q, floors, final_rounds, say) -> _Final:
    """Step 2: re-measure (interleaved) the reference, the fastest setting and the preset candidates, then
    down the Pareto front to the choice; presets monotone in latency, a warning on a too-tight target."""
    ref_quality = result.reference.quality
    cfg = AdaptiveViTConfig.from_dict(info.config)
    work = lambda m: float(model_macs(cfg, [min(max(k, 0.0), info.num_patches) for k in m.tokens_kept])["total"])  # noqa: E731
    preset_picks = pick_presets(result.points, q, floors, ref_quality, cost=work)
    always = [result.reference, result.fastest, *preset_picks.values()]
    per_setting_final = len(evaluator.chunks) * final_rounds
    start_calls = evaluator.calls
    evaluator.on_call = lambda: say("finalists", evaluator.calls - start_calls, per_setting_final * (len(always) + 3))
    chosen, remeasured = select_final(
        result.points, target_ms, q, lambda ms: evaluator.remeasure(ms, final_rounds), always=always
    )
    say("finalists", evaluator.calls - start_calls, evaluator.calls - start_calls)
    points = [remeasured.get(m.thresholds, m) for m in result.points]
    reference = remeasured[result.reference.thresholds]
    fastest = remeasured[result.fastest.thresholds]
    meets = chosen is not None
    if chosen is None:  # everything paused: the fastest the model can be (by construction, not by noisy readings)
        chosen = fastest
    presets, same_as = monotone_presets({name: remeasured[m.thresholds] for name, m in preset_picks.items()}, floors, q)
    warnings = {}
    if meets:
        presets = {"target": chosen, **presets}
        warning = quality_warning(chosen, floors, ref_quality, info.num_patches)
        if warning:
            warnings["target"] = warning
    return _Final(chosen, meets, points, reference, fastest, pareto_front(points, q), presets, same_as, warnings)


def _heldout_check(session, heldout, masks, metric, space, reference, chosen, target_ms, q, tolerance, batch,
                   final_rounds, say) -> HeldoutCheck:
    """Re-measure the chosen setting and the nothing-paused reference on the held-out images, interleaved."""
    info = session.info
    hx = session.load_images(heldout)
    htargets = load_label_maps(heldout, Path(masks), info.input_size, int(info.config["num_classes"])) if masks else None
    hcalls = [0]
    held = BackendEvaluator(session, hx, batch, repeats=0, metric=metric, targets=htargets,
                            reference_thresholds=space.nothing_paused)
    ref_h = held(reference.thresholds)
    chosen_h = held(chosen.thresholds) if chosen.thresholds != reference.thresholds else ref_h
    pair = [chosen_h] if chosen_h is ref_h else [chosen_h, ref_h]
    total_h = len(pair) * len(held.chunks) * final_rounds

    def tick() -> None:
        hcalls[0] += 1
        say("held-out", hcalls[0], total_h)

    held.on_call = tick
    again = held.remeasure(pair, final_rounds)
    return HeldoutCheck(
        images=[p.name for p in heldout],
        thresholds=chosen.thresholds,
        latency=again[0],
        reference=again[-1],
        target_ms=float(target_ms),
        percentile=q,
        tolerance=float(tolerance),
        calibration_reference_ms=reference.latency(50),
    )


def _document(model, info, session, threads, images, batch, q, repeats, final_rounds, evaluator, masks, space,
              target_ms, meets, result, search_seconds, max_evals, points, front_keys, chosen, check, presets,
              floors, same_as=None, warnings=None) -> dict[str, Any]:
    """The calibration file's content (schema: :data:`avit.metadata.calibration_schema.CALIBRATION_SCHEMA`)."""
    same_as = same_as or {}
    warnings = warnings or {}

    def description(name: str) -> str:
        if name == "target":
            return f"best quality meeting {target_ms:g} ms {percentile_key(q)} at batch {batch}"
        floor = (floors or PRESET_FLOORS)[name]
        if name in same_as:
            return (f"same setting as {same_as[name]}: the least-work setting with quality >= {floor:g} x reference "
                    "was not faster when re-measured")
        return f"least work (MACs) with quality >= {floor:g} x reference"

    return {
        "format": FORMAT,
        "version": VERSION,
        "avit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "file": model.name,
            "sha256": file_sha256(model),
            "size_bytes": model.stat().st_size,
            "policy": info.policy,
            "pause_points": list(info.pause_points),
            "num_patches": info.num_patches,
        },
        "backend": {
            "name": session.backend.name,
            "providers": list(getattr(session.backend, "providers", [])),
            **({"inference_precision": session.backend.inference_precision}
               if hasattr(session.backend, "inference_precision") else {}),
            "intra_op_threads": int(threads or 0),
            "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.system()}",
            "cpu": cpu_record(),
        },
        "measurement": {
            "batch": batch,
            "percentile": q,
            "images": [p.name for p in images],
            "repeats": repeats,
            "final_rounds": final_rounds,
            "metric": evaluator.metric + (" vs masks" if masks else " agreement with nothing paused"),
            "reference": "the adaptive model at its nothing-paused thresholds "
            f"({', '.join(f'{t:g}' for t in space.nothing_paused)})",
            "latency": "per call of `batch` images, ms; search points: quick measurements, "
            "remeasured points: interleaved final run",
        },
        "target": {"latency_ms": float(target_ms), "percentile": q, "batch": batch, "met": meets},
        "search": {
            "evaluations": result.evaluations,
            "timed": evaluator.timed,
            "seconds": round(search_seconds, 3),
            "exhausted": result.exhausted,
            "max_evals": max_evals,
            "rays": [
                {"direction": list(r.direction), "s": r.s, "quality": r.quality if r.point is not None else None}
                for r in result.rays
            ],
        },
        "points": [_point(m, front_keys, q) for m in points],
        "chosen": {**_point(chosen, front_keys, q), "meets_target": meets},
        "heldout": check.to_dict() if check else None,
        "presets": {
            name: {
                "thresholds": list(m.thresholds),
                "latency_ms": m.latency(q),
                "percentile": q,
                "batch": batch,
                "quality": m.quality,
                "tokens_kept": list(m.tokens_kept),
                "description": description(name),
                **({"warning": warnings[name]} if name in warnings else {}),
            }
            for name, m in presets.items()
        },
    }
