"""``avit serve`` (HTTP service, FastAPI + uvicorn) and ``avit triton-repo`` (Triton model repository).

Registered on the ``avit`` app of :mod:`avit.cli._app`; :mod:`avit.cli.main` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from avit.cli._app import app, cli_errors, console, err_console, fmt_values, parse_thresholds
from avit.errors import InputError



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
    precision: Annotated[Optional[str], typer.Option("--precision", help="OpenVINO inference precision: f32 (default) | bf16 (CPUs with native bfloat16).")] = None,
    calibration: Annotated[Optional[Path], typer.Option(help="Calibration file with presets (default: <model>.calib.json if present).")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical|error|warning|info|debug.")] = "info",
) -> None:
    """Serve a model over HTTP: POST /predict (image upload, ?thresholds= | ?preset= | ?latency_budget_ms=), GET /model, GET /health."""
    from avit.serving import serve

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
        inference_precision=precision,
        announce=lambda line: err_console.print(escape(line)),
    )


@app.command("triton-repo")
@cli_errors
def triton_repo_command(
    model: Annotated[Path, typer.Argument(help="Model: .onnx, or a TensorRT .engine (with its .engine.json sidecar).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model repository folder to write.")],
    name: Annotated[Optional[str], typer.Option(help="Model name in Triton (default: the file's stem).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="max_batch_size of the dynamically batched (fixed-threshold) models.")] = 8,
    instances: Annotated[int, typer.Option(min=1, help="Model instances (instance_group count).")] = 1,
    device: Annotated[str, typer.Option(help="Instance kind: auto | cpu | gpu (engines: gpu).")] = "auto",
    preset: Annotated[Optional[list[str]], typer.Option(help="Also add a dynamically batched model with this calibration preset's thresholds fixed (repeatable; ONNX only).")] = None,
    fixed: Annotated[Optional[list[str]], typer.Option(help="Also add a dynamically batched model with fixed thresholds, NAME=0.2,0.4 (repeatable; ONNX only).")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(min=0, help="Dynamic batcher's max_queue_delay_microseconds.")] = 500,
    threads: Annotated[Optional[int], typer.Option(min=1, help="onnxruntime intra_op_thread_count per instance.")] = None,
    plugins: Annotated[Optional[Path], typer.Option(help="Engines: the avit plugin library the server must load (default: the sidecar's, $AVIT_PLUGIN_LIBRARY, build/plugins).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace model folders that already exist.")] = False,
) -> None:
    """Write a Triton Inference Server model repository (config.pbtxt + model file) for an avit model."""
    from avit.exporter.triton import write_triton_repository

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
        max_batch=max_batch,
        instances=instances,
        device=device,
        presets=preset or (),
        fixed=settings,
        max_queue_delay_us=max_queue_delay_us,
        intra_op_threads=threads,
        plugin_library=plugins,
        overwrite=overwrite,
    )
    table = Table(title=f"Triton model repository {escape(str(repo.root))}")
    for col in ("model", "backend", "pause_thresholds", "max_batch_size", "instances"):
        table.add_column(col)
    for spec in repo.models:
        if spec.fixed_thresholds is not None:
            what = "fixed " + fmt_values(spec.fixed_thresholds)
        else:
            what = {"request": "per request", "optional": "per request (optional)", "none": "-"}[spec.thresholds_input]
        table.add_row(
            escape(spec.name), spec.backend, what, str(spec.max_batch if spec.batching else 0), f"{spec.instances} × {spec.kind}"
        )
    console.print(table)
    start = f"tritonserver --model-repository={repo.root.resolve()}"
    if repo.models[0].backend == "tensorrt":
        lib = repo.plugin_library.resolve() if repo.plugin_library else "/path/to/libavit_plugins.so"
        start += f' --backend-config=tensorrt,plugins="{lib}"'
    console.print(f"start it with: {escape(start)}  (more in {escape(str(repo.readme))})")
