"""``avit serve`` (HTTP service, FastAPI + uvicorn), ``avit triton-repo`` (Triton model repository) and
``avit triton-serve`` (a repository on the tritonserver of PyPI nvidia-pytriton).

Registered on the ``avit`` app of :mod:`avit.cli._app`; :mod:`avit.cli.main` imports this module. See docs/serving.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from avit.cli import _precision
from avit.cli._app import app, cli_errors, console, err_console, fmt_values, parse_thresholds
from avit.errors import AvitError, InputError



@app.command("serve")
@cli_errors
def serve_command(
    model: Annotated[Path, typer.Argument(help="Model to serve (.onnx; .xml OpenVINO IR; .engine with TensorRT).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Model calls that may run at once (threads sharing one session).")] = 1,
    max_batch: Annotated[int, typer.Option(min=1, help="Most images per model call (requests with the same thresholds are batched).")] = 8,
    max_wait_ms: Annotated[float, typer.Option(min=0.0, help="Longest a request waits for others to share its call, ms (0: never wait).")] = 2.0,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime intra-op / OpenVINO inference threads (default: one per core).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="onnxruntime | openvino | tensorrt (default: by the file: .onnx ONNX Runtime, .xml OpenVINO IR, .engine TensorRT); openvino also runs an .onnx.")] = None,
    inference_precision: Annotated[Optional[str], _precision.inference_precision_option()] = None,
    calibration: Annotated[Optional[Path], typer.Option(help="Calibration file with presets (default: <model>.calib.json if present).")] = None,
    max_queue: Annotated[int, typer.Option(min=0, help="Requests that may wait beyond the running ones; more are answered 503 at once (Retry-After).")] = 64,
    timeout_s: Annotated[float, typer.Option("--request-timeout-s", min=0.001, help="Longest time from admission to the answer, s; then 504 and the request is dropped.")] = 60.0,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="Largest upload, MB; larger: 413 before the body is read (Content-Length) or while it streams.")] = 20.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical|error|warning|info|debug.")] = "info",
    slo_ms: Annotated[Optional[str], typer.Option(metavar="MS", help="Latency objective, ms from admission to answer: under load, requests without a knob get faster settings (more tokens paused) instead of 503s. Needs a calibration (avit calibrate).")] = None,
) -> None:
    """Serve a model over HTTP: POST /predict (image upload, ?thresholds= | ?preset= | ?latency_budget_ms=), GET /model, GET /health, GET /metrics.

    Overload: beyond --workers + --max-queue requests in progress a request is answered 503 with Retry-After
    at once; with --slo-ms, requests are served at the best quality that still meets the SLO, and a request
    is answered 503 only when even the fastest setting would miss it. Ctrl-C answers every admitted request
    before the server exits.
    """
    from avit.serving import serve

    slo = parse_ms(slo_ms, "--slo-ms")
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise InputError(f"--log-level must be one of critical, error, warning, info, debug, got {log_level!r}")
    serve(
        model,
        host=host,
        port=port,
        log_level=log_level,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        workers=workers,
        intra_op_threads=threads,
        calibration=calibration,
        backend=backend,
        inference_precision=inference_precision,
        max_queue=max_queue,
        timeout_s=timeout_s,
        max_upload_mb=max_upload_mb,
        slo_ms=slo,
        announce=lambda line: err_console.print(escape(line)),
    )


def parse_ms(text: Optional[str], option: str) -> Optional[float]:
    """``"800"`` → 800.0 ms; None stays None. Raises :class:`InputError` (one line) unless a positive finite number."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{option} must be a number of milliseconds, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise InputError(f"{option} must be a positive number of milliseconds, got {text}")
    return value


@app.command("triton-repo")
@cli_errors
def triton_repo_command(
    model: Annotated[Path, typer.Argument(help="Model: .onnx, a TensorRT .engine (with its .engine.json sidecar) or an OpenVINO .openvino.xml (with its .bin).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model repository folder to write.")],
    backend: Annotated[Optional[str], typer.Option(help="Triton backend: python (avit's runtime in Triton; dynamic batching of requests whose thresholds differ) | onnxruntime | tensorrt (default: python for .onnx and OpenVINO — it runs on avit triton-serve —, tensorrt for engines).")] = None,
    runtime: Annotated[Optional[str], typer.Option(help="--backend python: the avit runtime model.py uses, onnxruntime | openvino (default: openvino for .xml, else onnxruntime).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name in Triton (default: the file's stem).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="max_batch_size of the dynamically batched models (python backend, fixed-threshold models).")] = 8,
    instances: Annotated[int, typer.Option(min=1, help="Model instances (instance_group count).")] = 1,
    device: Annotated[str, typer.Option("--instance-kind", help="Triton instance kind: auto | cpu | gpu (engines: gpu; python backend: auto = cpu).")] = "auto",
    preset: Annotated[Optional[list[str]], typer.Option(help="Also add a dynamically batched model with this calibration preset's thresholds fixed (repeatable; not for engines).")] = None,
    fixed: Annotated[Optional[list[str]], typer.Option(help="Also add a dynamically batched model with fixed thresholds, NAME=0.2,0.4 (repeatable; not for engines).")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(min=0, help="Dynamic batcher's max_queue_delay_microseconds.")] = 500,
    max_queue: Annotated[int, typer.Option(min=0, help="Triton queue policy of batching models: most waiting requests, more are rejected at once (0: unbounded).")] = 64,
    queue_timeout_s: Annotated[float, typer.Option(min=0.0, help="Triton queue policy: longest wait in the queue, s, then rejected (0: no limit).")] = 30.0,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Intra-op threads per instance (onnxruntime intra_op_thread_count; python: the avit runtime's).")] = None,
    plugins: Annotated[Optional[Path], typer.Option(help="Engines: the avit plugin library the server must load (default: the sidecar's, $AVIT_PLUGIN_LIBRARY, build/plugins).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace model folders that already exist.")] = False,
    slo_ms: Annotated[Optional[str], typer.Option(metavar="MS", help="--backend python: serve under this latency objective, ms (images without pause_thresholds run at the setting avit's SLO controller picks; needs <model>.calib.json).")] = None,
) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt + model files) for an avit model."""
    from avit.serving.triton import write_triton_repository

    settings = {}
    for item in fixed or []:
        key, sep, values = item.partition("=")
        if not sep or not key:
            raise InputError(f"--fixed {item!r} must look like NAME=0.2,0.4")
        settings[key] = parse_thresholds(values)
    repo = write_triton_repository(
        model,
        output,
        name=name,
        backend=backend,
        runtime=runtime,
        max_batch=max_batch,
        instances=instances,
        device=device,
        presets=preset or (),
        fixed=settings,
        max_queue_delay_us=max_queue_delay_us,
        max_queue_size=max_queue,
        queue_timeout_s=queue_timeout_s,
        intra_op_threads=threads,
        plugin_library=plugins,
        overwrite=overwrite,
        slo_ms=parse_ms(slo_ms, "--slo-ms"),
    )
    table = Table(title=f"Triton model repository {escape(str(repo.root))}")
    for col in ("model", "backend", "pause_thresholds", "max_batch_size", "queue", "instances"):
        table.add_column(col)
    for spec in repo.models:
        if spec.fixed_thresholds is not None:
            what = "fixed " + fmt_values(spec.fixed_thresholds)
        elif spec.backend == "python" and spec.thresholds_input != "none":
            what = "per image (optional)" + (f"; SLO {spec.slo_ms:g} ms" if spec.slo_ms is not None else "")
        else:
            what = {"request": "per request", "optional": "per request (optional)", "none": "-"}[spec.thresholds_input]
        queue = (f"≤ {spec.max_queue_size}" if spec.max_queue_size else "unbounded") if spec.batching else "-"
        backend_name = spec.backend + (f" ({spec.runtime})" if spec.backend == "python" else "")
        table.add_row(
            escape(spec.name), backend_name, what, str(spec.max_batch if spec.batching else 0), queue, f"{spec.instances} × {spec.kind}"
        )
    console.print(table)
    if repo.models[0].backend == "python":
        start = f"avit triton-serve {repo.root}"
    else:
        start = f"tritonserver --model-repository={repo.root.resolve()}"
    if repo.models[0].backend == "tensorrt":
        lib = repo.plugin_library.resolve() if repo.plugin_library else "/path/to/libavit_plugins.so"
        start += f' --backend-config=tensorrt,plugins="{lib}"'
    console.print(f"start it with: {escape(start)}  (more in {escape(str(repo.readme))})")


@app.command("triton-serve")
@cli_errors
def triton_serve_command(
    repository: Annotated[Path, typer.Argument(help="Model repository written by avit triton-repo --backend python.")],
    host: Annotated[str, typer.Option(help="Address both endpoints listen on (loopback by default).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP/REST port (KServe v2 protocol).")] = 8000,
    grpc_port: Annotated[int, typer.Option(min=1, max=65535, help="gRPC port.")] = 8001,
    log: Annotated[Optional[Path], typer.Option(help="Write the server's log here (default: a temporary file).")] = None,
    timeout_s: Annotated[float, typer.Option("--load-timeout-s", min=1.0, help="Longest wait for every model to load, s.")] = 300.0,
) -> None:
    """Run a python-backend model repository with the tritonserver bundled in PyPI nvidia-pytriton (until Ctrl-C)."""
    from avit.serving.triton import serve_repository

    code = serve_repository(
        repository, host=host, http_port=http_port, grpc_port=grpc_port, log=log, timeout_s=timeout_s,
        announce=lambda line: err_console.print(escape(line)),
    )
    if code not in (0, None):
        raise AvitError(f"tritonserver exited with {code}" + (f" (log: {log})" if log else ""))
