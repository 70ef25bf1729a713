"""``avit export``: checkpoint → ONNX (→ OpenVINO IR, int8, ONNX Runtime-optimized, TensorRT engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from avit.cli._app import app, cli_errors, console, log_line


@app.command()
@cli_errors
def export(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.ckpt) to export, or an exported .onnx for --trt, --quantize, --optimize or --openvino.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="ONNX file to write (default: next to the checkpoint).")] = None,
    static: Annotated[bool, typer.Option("--static", help="Export the same weights without pause points (reference).")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Parity check PyTorch vs ONNX Runtime before writing.")] = True,
    atol: Annotated[Optional[float], typer.Option(help="Largest allowed max |Δlogits| in the parity check (default: 1e-4 fp32, 5e-2 fp16).")] = None,
    precision: Annotated[Optional[str], typer.Option(help="fp32 | fp16: weights and activations of the ONNX model (I/O stays float32); the engine's precision follows the ONNX.")] = None,
    trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT engine from the ONNX model.")] = False,
    engine: Annotated[Optional[Path], typer.Option(help="--trt: engine to write (default: the ONNX path with .engine); its sidecar is <engine>.json.")] = None,
    min_batch: Annotated[int, typer.Option(min=1, help="--trt: smallest batch of the optimization profile.")] = 1,
    opt_batch: Annotated[Optional[int], typer.Option(min=1, help="--trt: batch TensorRT optimizes for (default: --min-batch).")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="--trt: largest batch of the optimization profile.")] = 8,
    plugins: Annotated[Optional[Path], typer.Option(help="--trt: avit plugin library (default: $AVIT_PLUGIN_LIBRARY, then build/plugins, plugins/build*).")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(help="--trt: timing cache file to reuse and update.")] = None,
    quantize: Annotated[Optional[str], typer.Option(help="int8 (static QDQ, calibrated on photos; TensorRT's explicit-quantization form) | int8-dynamic (ONNX Runtime only): the backbone's linear layers; token heads and adaptive ops stay fp32. Writes <model>.int8.onnx.")] = None,
    images: Annotated[Optional[Path], typer.Option(help="--quantize int8: folder of calibration images (default: the installed training photos).")] = None,
    max_images: Annotated[int, typer.Option(min=1, help="--quantize int8: calibration images used at most (evenly spread over the folder).")] = 16,
    keep_fp32: Annotated[Optional[str], typer.Option(help="--quantize: regular expression of backbone layers to leave fp32, e.g. 'mlp\\.fc2'.")] = None,
    optimize: Annotated[bool, typer.Option("--optimize", help="Also write <model>.ort.onnx: transformer fusions + ONNX Runtime graph optimizations, saved offline (ONNX Runtime only).")] = False,
    opt_level: Annotated[str, typer.Option(help="--optimize: ONNX Runtime level saved: basic | extended | all (all is specific to this machine's CPU).")] = "extended",
    openvino: Annotated[bool, typer.Option("--openvino", help="Also write <model>.openvino.xml + .bin: the OpenVINO IR (float32 weights) of the fp32 ONNX, parity-checked; run it with avit run/serve (--inference-precision auto picks bf16 on CPUs with native bfloat16).")] = False,
) -> None:
    """Export a checkpoint to ONNX with real token removal and pause thresholds as a graph input."""
    from avit.exporter.pipeline import export_chain

    done = export_chain(
        model, output, static=static, check=check, atol=atol, precision=precision, quantize=quantize,
        calib_images=images, calib_count=max_images, keep_fp32=keep_fp32, optimize=optimize,
        opt_level=opt_level, openvino=openvino, trt=trt, engine=engine, min_batch=min_batch, opt_batch=opt_batch,
        max_batch=max_batch, plugins=plugins, timing_cache=timing_cache, log=log_line,
    )
    if done.export is not None:
        r = done.export
        parity = f"{len(r.parity)} settings ok, max |Δlogits| {max(x.max_abs_diff for x in r.parity):.1e}" if r.parity else "skipped"
        console.print(
            f"wrote {escape(str(r.path))} ({r.size_bytes / 1e6:.1f} MB, adaptive ops: {', '.join(r.adaptive_ops) or 'none'}; "
            f"export {r.export_seconds:.0f} s, parity {parity})"
        )
    if done.openvino is not None:
        o = done.openvino
        parity = (f"{len(o.parity)} settings ok against {o.reference}, max |Δlogits| {max(x.max_abs_diff for x in o.parity):.1e}"
                  if o.parity else "skipped")
        console.print(
            f"wrote {escape(str(o.path))} + {escape(o.weights.name)} (OpenVINO IR, {o.size_bytes / 1e6:.1f} MB, float32 weights, "
            f"{o.nodes_marked} token-head nodes kept float32 under bf16; parity {parity})"
        )
    if done.quantized is not None:
        console.print(f"wrote {escape(str(done.quantized))} ({quantize}: backbone linear layers; thresholds input unchanged)")
    if done.optimize is not None:
        o = done.optimize
        fusions = ", ".join(f"{k} {v}" for k, v in o.fusions.items()) or "none"
        console.print(f"wrote {escape(str(o.path))} (ONNX Runtime {o.level}; fusions: {fusions}; parity {len(o.parity)} settings ok)")
    if done.engine is not None:
        e = done.engine
        console.print(
            f"wrote {escape(str(e.engine_path))} ({e.size_bytes / 1e6:.1f} MB, {e.sidecar.precision}, "
            f"batch {min_batch}..{max_batch}, {e.plugin_layers} plugin layers, built in {e.build_seconds:.0f} s) "
            f"and {escape(e.sidecar_path.name)}"
        )
        console.print(f"equivalent trtexec command:\n  {escape(e.trtexec)}")
