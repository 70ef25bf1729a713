"""``avit profile``: measured latency / throughput / tokens / MACs per setting and batch size, per stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from avit.cli import _precision
from avit.cli._app import app, cli_errors, console, err_console, fmt_values, parse_ints, parse_thresholds
from avit.errors import InputError



def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


#: Below this many columns the latency table leaves out p90 and the GMAC column (both stay in --json).
WIDE = 110


def _percentiles(calls: int) -> tuple[str, ...]:
    """Percentile columns worth printing for ``calls`` samples per setting: none for one call."""
    return () if calls < 2 else ("p50", "p90", "p95", "p99")


def _print_latency_tables(report) -> None:
    """One table per batch size; fits 80 columns (narrow terminals lose p90 and GMAC, kept in --json)."""
    wide = console.width >= WIDE
    for b in sorted(report.rounds):
        rows = [r for r in report.rows if r.batch == b]
        calls = min(int(r.latency_ms["n"]) for r in rows)
        pcts = tuple(k for k in _percentiles(calls) if wide or k != "p90")
        on = report.backend + (f" {report.inference_precision}" if report.inference_precision else "")
        table = Table(
            title=f"{escape(Path(report.model).name)} on {on}, batch {b}: {_count(report.rounds[b], 'round')} × "
                  f"{_count(len(report.images), 'image')} = {_count(calls, 'call')} per setting; ms per call",
            box=box.SIMPLE_HEAD, padding=0, show_edge=False, title_justify="left",
        )
        for col in ("setting", "thresholds", "tokens"):  # these wrap on narrow terminals; numbers never do
            table.add_column(col, justify="left" if col == "setting" else "right", overflow="fold",
                             min_width={"setting": 8, "thresholds": 10, "tokens": 6}[col])
        for col in ("mean" if pcts else "ms", *pcts, "img/s", "speedup", *(("GMAC/img exec|ideal",) if wide else ()), "IoU"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in rows:
            lat = r.latency_ms
            table.add_row(
                escape(r.label) + (" (ref)" if r.reference else ""),
                "-" if r.thresholds is None else fmt_values(r.thresholds, 3),
                ", ".join(f"{k:.0f}" for k in r.tokens_kept),
                *(_ms(lat[k]) for k in ("mean", *pcts)),
                f"{r.throughput:.0f}" if r.throughput >= 100 else f"{r.throughput:.3g}",
                f"{r.speedup:.2f}×",
                *((f"{r.gmac_executed:.1f}|{r.gmac_ideal:.1f}",) if wide else ()),
                f"{r.iou:.4f}",
            )
        console.print()
        console.print(table, soft_wrap=False)
        if 2 <= calls < 100:
            console.print(f"p99 of {calls} calls lies between the two slowest; more --rounds for tail latency",
                          soft_wrap=False)
    console.print(f"(ref): {escape(report.reference)}; speedup: median over rounds of ref / setting time"
                  + ("" if wide else f"; p90 and GMAC per image: --json or {WIDE}+ columns"), soft_wrap=False)


def _print_stage_tables(report) -> None:
    """Time per stage, one table per batch size with a column per setting (ONNX Runtime only)."""
    staged = [r for r in report.rows if r.stages_ms]
    if staged:
        from avit.profiling.ort_profiler import stage_order

        names = stage_order([r.stages_ms for r in staged])
        for b in sorted({r.batch for r in staged}):
            rows = [r for r in staged if r.batch == b]
            table = Table(title=f"time per stage, batch {b}: ms per call (share of the call)", box=box.SIMPLE_HEAD,
                          padding=0, show_edge=False, title_justify="left")
            table.add_column("stage")
            for r in rows:
                table.add_column(escape(r.label) + (" (ref)" if r.reference else ""), justify="right")
            totals = [sum(r.stages_ms.values()) or 1.0 for r in rows]
            for n in names:
                table.add_row(escape(n), *(
                    f"{_ms(r.stages_ms[n])} ({100 * r.stages_ms[n] / total:.0f}%)" if n in r.stages_ms else "-"
                    for r, total in zip(rows, totals)
                ))
            console.print()
            console.print(table, soft_wrap=False)
    if report.stages_note:
        console.print(escape(report.stages_note), soft_wrap=False)


@app.command("profile")
@cli_errors
def profile_command(
    model: Annotated[Path, typer.Argument(help="Adaptive model (.onnx, .xml OpenVINO IR, or .engine).")],
    images: Annotated[Optional[Path], typer.Option(help="Folder of images (or one image). Default: the installed held-out photos.")] = None,
    max_images: Annotated[int, typer.Option(min=1, help="Use at most this many images (evenly spread).")] = 8,
    static: Annotated[Optional[Path], typer.Option(help="Static export of the same weights for the reference row (default: the adaptive model at nothing-paused thresholds).")] = None,
    batch: Annotated[str, typer.Option("--batch-sizes", help="Batch sizes, e.g. 1,4.")] = "1",
    thresholds: Annotated[Optional[list[str]], typer.Option(help="A setting to profile, e.g. 0.2,0.4 (repeat the option for more). Default: the calibration presets, else a grid.")] = None,
    preset: Annotated[Optional[list[str]], typer.Option(help="A calibration preset to profile (repeatable).")] = None,
    calib: Annotated[Optional[Path], typer.Option("--calibration", help="Calibration file with presets (default: <model>.calib.json if present).")] = None,
    iters: Annotated[Optional[int], typer.Option("--rounds", min=1, help="Timed rounds per batch size (each round runs every image at every setting).")] = 10,
    duration: Annotated[Optional[float], typer.Option("--duration-s", help="Seconds of timed rounds per batch size (stops at --rounds or --duration-s, whichever first).")] = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed rounds first.")] = 1,
    stages: Annotated[bool, typer.Option("--stages/--no-stages", help="Per-stage time from ONNX Runtime's profiler.")] = True,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON here ('-': stdout, nothing else printed).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG: latency and agreement per setting, tokens kept, time per stage.")] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime intra-op / OpenVINO inference threads (default: one per core).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="onnxruntime | openvino | tensorrt (default: by the file: .onnx ONNX Runtime, .xml OpenVINO IR, .engine TensorRT); openvino also runs an .onnx.")] = None,
    inference_precision: Annotated[Optional[str], _precision.inference_precision_option()] = None,
) -> None:
    """Measure latency (mean, p50-p99), throughput, tokens kept and MACs per threshold setting and batch size."""
    from avit.data.files import image_files
    from avit.profiling.profile import profile

    batches = parse_ints(batch)
    if not batches or min(batches) < 1:
        raise InputError(f"--batch-sizes needs positive integers, got {batch!r}")
    if json_out is None and iters is None and duration is None:
        raise InputError("give --rounds or --duration-s")
    paths = image_files(images, "heldout", max_images)
    settings = [(f"thresholds {fmt_values(parse_thresholds(t), 3)}", parse_thresholds(t)) for t in thresholds or []]
    quiet = json_out is not None and str(json_out) == "-"
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
        console=err_console, transient=True, disable=quiet,
    ) as bar:
        task = bar.add_task("profiling", total=1.0)
        report = profile(
            model, paths, static=static, batches=batches, settings=settings or None, presets=preset or (),
            iters=iters, duration=duration,
            warmup=warmup, stages=stages, calibration=calib if calib else None, threads=threads,
            backend=backend, inference_precision=inference_precision,
            progress=lambda desc, done, total: bar.update(task, description=desc, completed=done, total=total),
        )
    data = report.to_dict()
    if json_out is not None:
        text = json.dumps(data, indent=1, allow_nan=False)
        if quiet:
            typer.echo(text)
            return
        from avit._io import atomic_write

        atomic_write(json_out, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    _print_latency_tables(report)
    _print_stage_tables(report)
    if plot is not None:
        from avit.profiling.plot import plot_profile

        console.print(f"wrote {escape(str(plot_profile(data, plot)))}")
    if json_out is not None:
        console.print(f"wrote {escape(str(json_out))}")
    console.print(f"profiled {len(report.images)} images in {report.seconds:.0f} s")
