"""``avit quantize`` and ``avit optimize``: int8 and ONNX Runtime-optimized copies of an exported model
(:func:`avit.exporter.quantize.quantize_onnx`, :func:`avit.exporter.optimize.optimize_onnx`).

Registered on the ``avit`` app of :mod:`avit.cli._app`; :mod:`avit.cli.main` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from avit.cli._app import app, cli_errors, console



@app.command("quantize")
@cli_errors
def quantize_command(
    model: Annotated[Path, typer.Argument(help="fp32 ONNX model exported by avit.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="ONNX file to write (default: <model>.int8.onnx).")] = None,
    mode: Annotated[str, typer.Option(help="int8 (static QDQ, calibrated on photos; TensorRT's explicit-quantization form) | int8-dynamic (activations quantized per call; ONNX Runtime only); as avit export --quantize.")] = "int8",
    images: Annotated[Optional[Path], typer.Option(help="int8: folder of calibration images (default: the installed training photos).")] = None,
    max_images: Annotated[int, typer.Option(min=1, help="int8: calibration images used at most (evenly spread over the folder).")] = 16,
    method: Annotated[str, typer.Option(help="int8: calibration method minmax | percentile | entropy.")] = "minmax",
    asymmetric: Annotated[bool, typer.Option("--asymmetric", help="int8: uint8 activations with a zero point (more accurate on the CPU; not TensorRT's form).")] = False,
    keep_fp32: Annotated[Optional[str], typer.Option(help="Regular expression of backbone layers to leave fp32, e.g. 'mlp\\.fc2'.")] = None,
) -> None:
    """Quantize the backbone's linear layers to int8; token heads and adaptive ops stay fp32."""
    from avit.data.files import image_files
    from avit.errors import InputError
    from avit.exporter.pipeline import QUANTIZE_MODES
    from avit.exporter.quantize import quantize_onnx

    # The old values static / dynamic (the library's names) are still accepted.
    library_mode = QUANTIZE_MODES.get(mode, mode if mode in QUANTIZE_MODES.values() else None)
    if library_mode is None:
        raise InputError(f"--mode must be {' or '.join(QUANTIZE_MODES)}, got {mode!r}")
    files = image_files(images, split="train", limit=max_images) if library_mode == "static" else None
    out = output or model.with_suffix(".int8.onnx")
    path = quantize_onnx(model, out, mode=library_mode, calibration_images=files, calibrate_method=method,
                         symmetric_activations=not asymmetric, keep_fp32=keep_fp32)
    console.print(f"wrote {escape(str(path))} (int8 {library_mode}; thresholds input unchanged)")


@app.command("optimize")
@cli_errors
def optimize_command(
    model: Annotated[Path, typer.Argument(help="ONNX model exported (and possibly quantized) by avit.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="ONNX file to write (default: <model>.ort.onnx).")] = None,
    opt_level: Annotated[str, typer.Option(help="ONNX Runtime level saved: basic | extended | all (all is specific to this machine's CPU).")] = "extended",
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare with the source in ONNX Runtime before writing.")] = True,
    atol: Annotated[float, typer.Option(help="Largest allowed max |Δlogits| in the check.")] = 1e-4,
) -> None:
    """Fuse attention / skip-LayerNorm / bias-GELU for ONNX Runtime and save the optimized graph offline."""
    from avit.exporter.optimize import optimize_onnx

    out = output or model.with_suffix(".ort.onnx")
    done = optimize_onnx(model, out, level=opt_level, check=check, atol=atol, log=lambda m: console.print(f"  {escape(m)}"))
    console.print(
        f"wrote {escape(str(done.path))} ({done.size_bytes / 1e6:.1f} MB, ONNX Runtime {done.level}; fusions: "
        f"{', '.join(f'{k} {v}' for k, v in done.fusions.items()) or 'none'}; {done.seconds:.0f} s)"
    )
