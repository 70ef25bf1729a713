"""``avit run`` (an exported model on images) and ``avit inspect`` (what an artifact is)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from avit.cli import _precision
from avit.cli._app import app, cli_errors, console, err_console, fmt_values, parse_thresholds
from avit.errors import InputError


@app.command()
@cli_errors
def run(
    model: Annotated[Path, typer.Argument(help="Exported model (.onnx, .xml OpenVINO IR, or .engine).")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    thresholds: Annotated[Optional[str], typer.Option(help="Pause thresholds (or keep ratios), one per pause point, e.g. 0.2,0.4.")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="Folder for <image>.mask.png and <image>.overlay.png.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per call.")] = 1,
    preset: Annotated[Optional[str], typer.Option(help="Calibration preset instead of --thresholds (see avit calibrate), e.g. balanced.")] = None,
    calib: Annotated[Optional[Path], typer.Option("--calibration", help="Calibration file for --preset (default: <model>.calib.json beside the model).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime intra-op / OpenVINO inference threads (default: one per core).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="onnxruntime | openvino | tensorrt (default: by the file: .onnx ONNX Runtime, .xml OpenVINO IR, .engine TensorRT); openvino also runs an .onnx.")] = None,
    inference_precision: Annotated[Optional[str], _precision.inference_precision_option()] = None,
    batch_layout: Annotated[str, typer.Option(help="auto | padded | per_image: how a batch with different token counts runs (see AdaptiveSession).")] = "auto",
) -> None:
    """Run an exported model on images; print tokens kept per pause point and latency."""
    from avit.runtime import AdaptiveSession
    from avit.runtime.files import run_files

    if preset is not None and thresholds is not None:
        raise InputError("give --thresholds or --preset, not both")
    session = AdaptiveSession(model, calibration=calib if calib else (None if preset else False),
                              intra_op_threads=threads, batch_layout=batch_layout, backend=backend,
                              inference_precision=inference_precision)
    if preset and session.preset(preset).warning:
        err_console.print(f"[bold yellow]warning:[/] preset {escape(preset)}: {escape(session.preset(preset).warning)}")
    values = session.thresholds(session.preset(preset).thresholds if preset else parse_thresholds(thresholds))
    results = run_files(session, images, values, batch=batch, output_dir=output_dir)
    on = _precision.describe(session)
    table = Table(title=f"{model.name} on {on}: {f'preset {preset}, ' if preset else ''}thresholds {fmt_values(values.tolist()) or '-'} ({session.info.policy})")
    table.add_column("image")
    for k in session.info.pause_points:
        table.add_column(f"tokens after block {k}", justify="right")
    table.add_column("ms / image", justify="right")
    for r in results:
        table.add_row(escape(r.path.name), *(f"{k} / {session.info.num_patches}" for k in r.tokens_kept), f"{r.latency_ms:.1f}")
    console.print(table)
    if output_dir is not None:
        console.print(f"wrote masks and overlays to {escape(str(output_dir))}")


@app.command()
@cli_errors
def inspect(path: Annotated[Path, typer.Argument(help="An avit artifact: .onnx, .xml (OpenVINO IR) or .ckpt.")]) -> None:
    """Print what an artifact is: config, pause points, policy, inputs/outputs, opset, metadata."""
    from avit.inspect import describe

    for title, rows in describe(path):
        table = Table(title=title, show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in rows:
            table.add_row(escape(key), escape(value))
        console.print(table)
