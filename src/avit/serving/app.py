"""The HTTP service: a FastAPI app over :class:`~avit.serving.predictor.Predictor` (``pip install 'avit[serve]'``).

Endpoints:

* ``GET /health`` — ``{"status": "ok", "model": name, "requests": {...}, "batcher": {...}}`` once the
  model is loaded (requests admitted / shed / timed out / in progress; model calls, cancelled requests);
* ``GET /model`` — the model card (:meth:`Predictor.model_card`): pause points, policy, defaults,
  input size, classes, presets, batching settings;
* ``POST /predict`` — multipart upload field ``image`` (PNG, JPEG, …) and query parameters
  ``thresholds=0.2,0.4`` | ``preset=NAME`` | ``latency_budget_ms=40`` (the per-request quality knob,
  at most one) and ``mask=true|false``. Answer: JSON with ``tokens_kept``, ``thresholds``, ``preset``,
  ``latency_ms`` (``model``, ``queue``, ``total``), ``batch_size``, ``class_fractions`` and
  ``mask_png_base64`` (the mask at the image's own size); under an SLO also ``setting`` and
  ``"slo": {"ms": S, "met": true|false}``;
* ``GET /metrics`` — Prometheus text format (:mod:`avit.serving.metrics`): latency histogram, queue
  length, answers per setting, shed, timeouts, SLO misses, tokens kept.

**Under a latency SLO** (``slo_ms``, ``avit serve --slo-ms``): a request without a knob runs at the setting
the :class:`~avit.runtime.slo.SloController` picks for its batch (best quality that lets every waiting
request finish within the SLO, counted from admission; the model's defaults when load allows); a request is
answered 503 only when even the fastest setting could not answer it in time (or beyond ``max_queue``).

Errors a client causes (undecodable image, bad thresholds, unknown preset, …) answer 422 with
``{"detail": "<one line>"}``.

Back-pressure on ``POST /predict`` (:mod:`avit.serving.limits`): ``max_queue`` (beyond ``workers +
max_queue`` requests in progress: **503** with ``Retry-After``, answered at once), ``timeout_s`` (no
answer in time: **504**, the request is dropped from the batcher's queue), ``max_upload_mb`` (**413**,
decided from ``Content-Length`` before the body is read, or while a chunked body streams in). Shutdown
(SIGINT / SIGTERM) stops accepting connections, answers every admitted request, then stops the batcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from typing import Annotated, Optional

from avit.errors import AvitError, BackendUnavailableError, InputError

try:
    from fastapi import FastAPI, File, Query, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, Response
except ModuleNotFoundError as exc:  # pragma: no cover - depends on the install
    raise BackendUnavailableError(
        f"the avit service needs FastAPI, uvicorn and python-multipart ({exc.name} is missing): pip install 'avit[serve]'"
    ) from exc

from avit import __version__
from avit.serving.limits import Admission, RequestLimits
from avit.serving.metrics import ServiceMetrics
from avit.serving.predictor import Predictor


def _check_limits(max_queue: int | None, timeout_s: float | None, max_upload_mb: float | None) -> None:
    if max_queue is not None and (isinstance(max_queue, bool) or int(max_queue) != max_queue or max_queue < 0):
        raise InputError(f"max_queue must be an integer >= 0, got {max_queue}")
    for name, value in (("timeout_s", timeout_s), ("max_upload_mb", max_upload_mb)):
        if value is not None and not (0 < float(value) < float("inf")):
            raise InputError(f"{name} must be a positive number, got {value}")


def create_app(
    model: str | os.PathLike | None = None,
    *,
    predictor: Predictor | None = None,
    max_queue: int | None = None,
    timeout_s: float | None = None,
    max_upload_mb: float | None = None,
    slo_ms: float | None = None,
    **options,
) -> FastAPI:
    """A FastAPI app serving ``model`` (or an existing ``predictor``).

    Args:
        model: ``.onnx`` / ``.engine`` path.
        predictor: Serve this :class:`Predictor` instead (``options`` must then be empty).
        max_queue: Requests that may wait beyond the ``workers`` running ones; more are answered 503 at
            once with ``Retry-After`` (None: no limit).
        timeout_s: Longest time from admission to the answer, seconds; then 504 (None: no limit).
        max_upload_mb: Largest upload, MB (10^6 bytes); larger: 413 (None: no limit).
        slo_ms: Serve under this latency objective, ms from admission to answer (module docstring); needs
            a calibration of the model on this backend. With ``predictor``, give it to the predictor instead.
        **options: :class:`Predictor` keyword arguments (``max_batch``, ``max_wait_ms``, ``workers``,
            ``intra_op_threads``, ``providers``, ``calibration``, ``backend``, ``inference_precision``).

    The predictor (and its batcher threads) is closed when the app shuts down. ``app.state.admission``
    counts admitted, shed and timed-out requests (also in ``GET /health``).

    Raises:
        ArtifactError, BackendUnavailableError, InputError: from :class:`Predictor`; bad limits.
    """
    _check_limits(max_queue, timeout_s, max_upload_mb)
    if predictor is None:
        predictor = Predictor(model, slo_ms=slo_ms, **options)
    elif options or slo_ms is not None:
        raise InputError(f"give either a predictor or options ({', '.join([*options, *(['slo_ms'] if slo_ms else [])])}), not both")
    admission = Admission(max_queue, workers=predictor.batcher.workers)
    controller = predictor.batcher.controller
    limits = {
        "max_queue": max_queue,
        "timeout_s": timeout_s,
        "max_upload_mb": max_upload_mb,
        "slo_ms": None if controller is None else controller.slo_s * 1e3,
    }
    info = predictor.session.info
    metrics = ServiceMetrics(info.pause_points, lambda: predictor.batcher.queue_length, limits["slo_ms"])

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await run_in_threadpool(predictor.close)

    app = FastAPI(
        title="avit",
        version=__version__,
        description="Adaptive vision transformer with a per-request quality/speed knob (pause thresholds).",
        lifespan=lifespan,
    )
    app.state.predictor = predictor
    app.state.admission = admission
    app.state.limits = limits
    app.state.metrics = metrics
    app.add_middleware(
        RequestLimits,
        admission=admission,
        max_upload_bytes=None if max_upload_mb is None else int(float(max_upload_mb) * 1e6),
        timeout_s=timeout_s,
        paths=("/predict",),
        slo_check=None if controller is None else predictor.batcher.admit,
        retry_after=None if controller is None else predictor.batcher.retry_after_s,
        on_shed=lambda reason: metrics.shed.labels(reason).inc(),
        on_timeout=metrics.timeouts.inc,
    )

    @app.exception_handler(AvitError)
    async def _avit_error(_request: Request, exc: AvitError) -> JSONResponse:
        status = 422 if isinstance(exc, InputError) else 500
        return JSONResponse({"detail": str(exc).splitlines()[0] if str(exc) else type(exc).__name__}, status_code=status)

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the model is loaded and the batcher runs."""
        stats = predictor.batcher.stats
        return {
            "status": "ok",
            "model": predictor.model_card()["name"],
            "requests": admission.stats(),
            "batcher": {"requests": stats.requests, "calls": stats.calls, "images": stats.images, "cancelled": stats.cancelled},
        }

    @app.get("/model")
    async def model_card() -> dict:
        """The model's avit metadata, presets, the batching settings, the request limits and the SLO ladder."""
        card = {**predictor.model_card(), "limits": limits}
        if controller is not None:
            card["slo"] = controller.snapshot()
        return card

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition (see avit.serving.metrics)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.post("/predict")
    async def predict(
        request: Request,
        image: Annotated[UploadFile, File(description="The image (PNG, JPEG, … anything Pillow reads).")],
        thresholds: Annotated[Optional[str], Query(description="Pause thresholds, one per pause point, e.g. 0.2,0.4 (inf: pause everything).")] = None,
        preset: Annotated[Optional[str], Query(description="A calibration preset, e.g. balanced (see GET /model).")] = None,
        latency_budget_ms: Annotated[Optional[float], Query(description="Best-quality preset whose calibrated latency fits this budget.")] = None,
        mask: Annotated[bool, Query(description="Include the mask as base64 PNG.")] = True,
    ) -> dict:
        """Segment one image with this request's quality knob (batched with concurrent requests that share it)."""
        received = getattr(request.state, "avit_admitted", None) or time.perf_counter()
        data = await image.read()
        prepare_started = time.perf_counter()
        x, size = await run_in_threadpool(predictor.prepare, data, image.filename or "image")
        prepare_ms = (time.perf_counter() - prepare_started) * 1e3
        future = predictor.submit(x, thresholds=thresholds, preset=preset, latency_budget_ms=latency_budget_ms, admitted=received)
        result = await asyncio.wrap_future(future)
        body = await run_in_threadpool(lambda: predictor.respond(result, size, mask=mask, received=received, prepare_ms=prepare_ms))
        total_s = time.perf_counter() - received
        slo = body.get("slo")
        metrics.answered(total_s, body.get("setting") or ",".join(f"{t:g}" for t in result.thresholds.tolist()),
                         body["tokens_kept"], info.num_patches, None if slo is None else slo["met"])
        return body

    return app


def _check_port(host: str, port: int) -> None:
    """Fail in one line (before loading the model) when ``host:port`` cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(f"cannot resolve host {host!r}: {exc.strerror}") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(address)
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(
    model: str | os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    announce: Callable[[str], None] | None = None,
    **options,
) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted (one process; ``options`` as :func:`create_app`).

    ``announce`` receives one line once the model is loaded, before the server starts listening.

    Graceful shutdown (SIGINT / SIGTERM, uvicorn's): the listening socket closes, idle connections close,
    every admitted request is answered (waiting at most ``timeout_s`` + 5 s when a ``timeout_s`` is set),
    then the batcher stops. A second Ctrl-C exits at once.
    """
    try:
        import uvicorn
    except ModuleNotFoundError as exc:
        raise BackendUnavailableError("the avit service needs uvicorn: pip install 'avit[serve]'") from exc
    _check_port(host, port)
    app = create_app(model, **options)
    limits = app.state.limits
    if announce is not None:
        b = app.state.predictor.batcher

        def show(value, unit=""):
            return "unlimited" if value is None else f"{value:g}{unit}"

        slo = "" if b.controller is None else (
            f"SLO {b.controller.slo_s * 1e3:g} ms over {len(b.controller.settings)} settings "
            f"({b.controller.settings[0].label} … {b.controller.settings[-1].label}); ")
        announce(
            f"serving {model} on http://{host}:{port} ({slo}max batch {b.max_batch}, max wait {b.max_wait_s * 1e3:g} ms, "
            f"{b.workers} worker{'s' if b.workers > 1 else ''}; queue {show(limits['max_queue'])}, timeout "
            f"{show(limits['timeout_s'], ' s')}, uploads {show(limits['max_upload_mb'], ' MB')}); POST /predict, GET /model, GET /health, GET /metrics"
        )
    grace = None if limits["timeout_s"] is None else float(limits["timeout_s"]) + 5.0
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=grace)
