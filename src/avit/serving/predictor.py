"""Framework-free service logic: image bytes + a quality knob → JSON-ready answer (torch-free).

:class:`Predictor` owns an :class:`~avit.runtime.AdaptiveSession` and a
:class:`~avit.runtime.batching.MicroBatcher`; any HTTP framework (the FastAPI app in
:mod:`avit.serving.app`, or your own) only moves bytes and query parameters to it.

The knob, per request (at most one; none = the model's default thresholds):

* ``thresholds="0.2,0.4"`` — one value per pause point (``inf`` allowed: pause everything);
* ``preset="balanced"`` — a preset of the model's calibration file (``avit calibrate``);
* ``latency_budget_ms=40`` — the best-quality preset whose calibrated latency fits.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from avit import __version__
from avit.data.images import decode_image
from avit._io import json_float, parse_thresholds
from avit.errors import InputError
from avit.runtime.batching import BatchedResult, MicroBatcher
from avit.runtime.session import AdaptiveSession
from avit.runtime.visualize import mask_image


def parse_thresholds_param(text: str | None) -> list[float] | None:
    """The ``thresholds`` query parameter ``"0.2,0.4"`` (or ``"0,inf"``) → floats; None/"" → None.

    Raises:
        InputError: not a comma-separated list of numbers, or a NaN.
    """
    return parse_thresholds(text, name="thresholds=")


class Predictor:
    """One model behind a micro-batcher, answering requests as JSON-ready dicts.

    Args:
        model: ``.onnx`` (or ``.engine``) path; or give ``session``.
        session: An open :class:`AdaptiveSession` to serve instead of opening ``model``.
        max_batch, max_wait_ms, workers, slo_ms: see :class:`~avit.runtime.batching.MicroBatcher` (``slo_ms``:
            requests without a knob run at the setting the SLO controller picks; needs a calibration).
        intra_op_threads, providers, calibration, backend, inference_precision: passed to
            :class:`AdaptiveSession`.

    Raises:
        ArtifactError, BackendUnavailableError: from opening the model.
        InputError: bad batching settings.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        session: AdaptiveSession | None = None,
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        workers: int = 1,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
        calibration: str | os.PathLike | bool | None = None,
        backend: str | None = None,
        inference_precision: str | None = None,
        slo_ms: float | None = None,
    ) -> None:
        if session is None:
            if model is None:
                raise InputError("give a model path or a session")
            session = AdaptiveSession(model, providers, intra_op_threads=intra_op_threads, calibration=calibration,
                                      backend=backend, inference_precision=inference_precision)
        self.session = session
        self.batcher = MicroBatcher(session, max_batch=max_batch, max_wait_ms=max_wait_ms, workers=workers, slo_ms=slo_ms)

    # ------------------------------------------------------------------ description
    def model_card(self) -> dict[str, Any]:
        """What ``GET /model`` answers: the model's avit metadata, presets and batching settings."""
        info = self.session.info
        return {
            "name": Path(self.session.path).name,
            "backend": self.session.backend.name,
            "inference_precision": getattr(self.session.backend, "inference_precision", None),
            "avit_version": info.avit_version,
            "server_avit_version": __version__,
            "variant": info.variant,
            "policy": info.policy,
            "threshold_kind": info.threshold_kind,
            "pause_points": list(info.pause_points),
            "default_thresholds": [json_float(t) for t in info.default_thresholds],
            "nothing_paused": json_float(info.nothing_paused),
            "everything_paused": json_float(info.everything_paused),
            "input_size": list(info.input_size),
            "num_patches": info.num_patches,
            "num_classes": int(info.config.get("num_classes", 0)),
            "class_names": list(info.class_names),
            "output_activation": info.output_activation,
            "precision": info.precision,
            "mean": list(info.mean),
            "std": list(info.std),
            "presets": {
                name: {
                    "thresholds": [json_float(t) for t in p.thresholds],
                    "latency_ms": p.latency_ms,
                    "batch": p.batch,
                    "quality": p.quality,
                }
                for name, p in sorted(self.session.presets.items())
            },
            "batching": {
                "max_batch": self.batcher.max_batch,
                "max_wait_ms": self.batcher.max_wait_s * 1e3,
                "workers": self.batcher.workers,
            },
        }

    # ------------------------------------------------------------------ one request
    def prepare(self, data: bytes, name: str = "image") -> tuple[np.ndarray, tuple[int, int]]:
        """Encoded image → (float32 ``[3, H, W]`` model input, original ``(width, height)``).

        Raises:
            InputError: the bytes are not an image.
        """
        rgb = decode_image(data, name)
        return self.session.preprocess(rgb), (rgb.shape[1], rgb.shape[0])

    def submit(
        self,
        x: np.ndarray,
        *,
        thresholds: str | Sequence[float] | None = None,
        preset: str | None = None,
        latency_budget_ms: float | None = None,
        admitted: float | None = None,
    ) -> Future:
        """Queue a prepared image with its knob (``thresholds`` may be the query string; ``admitted``: the
        ``time.perf_counter()`` of admission, where an SLO counts from). Raises :class:`InputError`."""
        if isinstance(thresholds, str):
            thresholds = parse_thresholds_param(thresholds)
        preset = preset or None
        return self.batcher.submit(x, thresholds, preset=preset, latency_budget_ms=latency_budget_ms, admitted=admitted)

    def respond(self, result: BatchedResult, size: tuple[int, int], *, mask: bool = True, received: float | None = None,
                prepare_ms: float | None = None) -> dict[str, Any]:
        """JSON-ready answer for one request's result.

        ``mask``: include the mask as base64 PNG at the image's own size (one channel: 8-bit grey
        probability; several: palette colours of the argmax class). ``received``: the
        ``time.perf_counter()`` of admission (the answer's ``latency_ms.total`` and, under an SLO,
        ``slo.met`` count from it). ``prepare_ms``: how long :meth:`prepare` took for this request; with the
        time of this call, the SLO controller's estimate of the work per request outside the model.

        One output channel is the probability of the *positive* class: its fraction is named by the last
        class name (``["background", "salient"]`` → ``"salient"``).
        """
        started = time.perf_counter()
        info = self.session.info
        probs = result.probabilities(info.output_activation)[0]
        if probs.shape[0] == 1:
            fractions = {(info.class_names[-1] if info.class_names else "foreground"): float((probs[0] > 0.5).mean())}
        else:
            winners = np.bincount(probs.argmax(axis=0).ravel(), minlength=probs.shape[0]) / probs[0].size
            names = list(info.class_names) if len(info.class_names) == probs.shape[0] else [str(i) for i in range(probs.shape[0])]
            fractions = {n: float(f) for n, f in zip(names, winners)}
        body: dict[str, Any] = {
            "tokens_kept": [int(v) for v in result.tokens_kept[0]],
            "num_patches": info.num_patches,
            "thresholds": [json_float(float(str(np.float32(t)))) for t in result.thresholds],  # 0.6, not 0.6000000238
            "preset": result.preset,
            "within_budget": result.within_budget,
            "latency_ms": {
                "model": round(result.latency_ms, 3),
                "queue": round(result.queue_ms, 3),
                **({"total": round((time.perf_counter() - received) * 1e3, 3)} if received is not None else {}),
            },
            "batch_size": result.batch_size,
            "requests_in_batch": result.requests_in_batch,
            "image_size": list(size),
            "class_fractions": fractions,
        }
        if mask:
            buffer = io.BytesIO()
            mask_image(probs, size).save(buffer, format="PNG")
            body["mask_png_base64"] = base64.b64encode(buffer.getvalue()).decode("ascii")
        controller = self.batcher.controller
        if controller is not None:
            body["setting"] = result.setting
            if received is not None:
                done = time.perf_counter()
                total_ms = (done - received) * 1e3
                body["latency_ms"]["total"] = round(total_ms, 3)
                body["slo"] = {"ms": controller.slo_s * 1e3, "met": bool(total_ms <= controller.slo_s * 1e3)}
                respond_ms = (done - started) * 1e3
                controller.observe_overhead((prepare_ms or 0.0) + respond_ms, respond_ms)
        return body

    def predict(
        self,
        data: bytes,
        *,
        thresholds: str | Sequence[float] | None = None,
        preset: str | None = None,
        latency_budget_ms: float | None = None,
        mask: bool = True,
        name: str = "image",
        timeout: float | None = 60.0,
    ) -> dict[str, Any]:
        """Blocking: :meth:`prepare`, :meth:`submit`, wait, :meth:`respond`. Raises :class:`InputError`."""
        received = time.perf_counter()
        x, size = self.prepare(data, name)
        prepared = time.perf_counter()
        future = self.submit(x, thresholds=thresholds, preset=preset, latency_budget_ms=latency_budget_ms, admitted=received)
        return self.respond(future.result(timeout), size, mask=mask, received=received, prepare_ms=(prepared - received) * 1e3)

    def close(self) -> None:
        """Finish queued requests and stop the batcher."""
        self.batcher.close()
