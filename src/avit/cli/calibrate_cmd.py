"""``avit calibrate``: per-pause-point thresholds for a latency target, measured on the backend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from avit.cli import _precision
from avit.cli._app import app, cli_errors, console, err_console, fmt_values



def _ms(value: float) -> str:
    """Milliseconds with 3 significant digits below 100 ms (so close calls stay visible), else 1 decimal."""
    return f"{value:.3g}" if value < 100 else f"{value:.1f}"


@app.command("calibrate")
@cli_errors
def calibrate_command(
    model: Annotated[Path, typer.Argument(help="Adaptive model (.onnx, .xml OpenVINO IR, or .engine).")],
    target_latency_ms: Annotated[float, typer.Option(help="Latency target of one call of --batch images, ms.")],
    percentile: Annotated[float, typer.Option(help="Which percentile of the per-call latency must meet the target.")] = 95.0,
    batch: Annotated[int, typer.Option(min=1, help="Images per call (calibrate at the batch size you deploy).")] = 1,
    images: Annotated[Optional[Path], typer.Option(help="Folder of calibration images. Default: the installed training photos.")] = None,
    heldout: Annotated[Optional[Path], typer.Option(help="Folder of held-out images for the check. Default: the installed held-out photos, or one image in four of --images.")] = None,
    max_images: Annotated[int, typer.Option(min=1, help="Calibration images to use at most (evenly spread).")] = 8,
    max_heldout: Annotated[int, typer.Option(min=1, help="Held-out images to use at most.")] = 16,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Calibration file (default: <model>.calib.json beside the model).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Pareto-front PNG (default: <model>.calib.png beside the calibration file).")] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Write no plot.")] = False,
    max_evals: Annotated[int, typer.Option(min=3, help="Most threshold settings the search measures.")] = 40,
    repeats: Annotated[int, typer.Option("--search-rounds", min=0, help="Timed passes over the images per setting during the search.")] = 2,
    final_rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds re-measuring the finalists and the held-out check.")] = 3,
    metric: Annotated[Optional[str], typer.Option(help="Quality: iou | pixel | top1 (default: iou for dense outputs, top1 for 1×1).")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="Folder of label maps <image stem>.png: score against them instead of agreement with the full model.")] = None,
    tolerance: Annotated[float, typer.Option(min=0.0, help="Held-out check passes within target × (1 + tolerance).")] = 0.05,
    threads: Annotated[Optional[int], typer.Option(min=1, help="ONNX Runtime intra-op / OpenVINO inference threads (default: one per core).")] = None,
    backend: Annotated[Optional[str], typer.Option(help="onnxruntime | openvino | tensorrt (default: by the file: .onnx ONNX Runtime, .xml OpenVINO IR, .engine TensorRT); openvino also runs an .onnx.")] = None,
    inference_precision: Annotated[Optional[str], _precision.inference_precision_option()] = None,
) -> None:
    """Search the per-pause-point thresholds for the best quality that meets a latency target; write presets."""
    from avit.calibration.calibrate import calibrate
    from avit.calibration.images import split_images
    from avit.evaluation.latency import percentile_key
    from avit.metadata.calibration import calibration_path

    calib_paths, held_paths = split_images(images, heldout, max_images=max_images, max_heldout=max_heldout)
    out_path = output or calibration_path(model)
    plot_path = None if no_plot else (plot or out_path.with_name(out_path.name.removesuffix(".json") + ".png"))
    key = percentile_key(percentile)
    console.print(
        f"calibrating {escape(str(model))} for {target_latency_ms:g} ms {key} at batch {batch} on "
        f"{len(calib_paths)} images; held-out check on {len(held_paths)} others"
    )
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} calls"),
        TimeElapsedColumn(), console=err_console, transient=True,
    ) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=min(done, total), total=total)

        report = calibrate(
            model, target_latency_ms, calib_paths, heldout=held_paths, batch=batch, percentile=percentile,
            output=out_path, plot=plot_path, max_evals=max_evals, repeats=repeats, final_rounds=final_rounds,
            metric=metric, masks=masks, tolerance=tolerance, threads=threads, backend=backend, inference_precision=inference_precision, progress=progress,
        )

    _print_search(report, key)
    _print_presets(report, key)
    _print_verdict(report, key)
    _print_heldout(report, key)
    console.print(f"wrote {escape(str(report.path))}" + (f" and {escape(str(report.plot))}" if report.plot else ""))
    hint = f"; use it: avit run {escape(str(model))} IMAGES --preset target" if report.meets_target else ""
    console.print(f"total {report.seconds:.0f} s{hint}")


def _print_search(report, key: str) -> None:
    """How the search went, and the Pareto front on the calibration images."""
    q, data, batch = report.percentile, report.data, report.batch
    console.print(
        f"search: {report.evaluations} settings measured ({report.timed} timed, the others shared the timing of "
        f"an identical token selection) in {report.search_seconds:.0f} s"
        + ("; stopped at --max-evals" if data["search"]["exhausted"] else "")
    )
    table = Table(title=f"Pareto front on the calibration images ({key} of one call, batch {batch})")
    for col in ("", "thresholds", "tokens kept", f"{key} ms", "mean ms", "quality", "re-measured"):
        table.add_column(col, justify="right")
    for m in report.front:
        mark = "chosen" if m.thresholds == report.chosen.thresholds else ""
        table.add_row(
            mark, fmt_values(m.thresholds), ", ".join(f"{k:.0f}" for k in m.tokens_kept),
            _ms(m.latency(q)), _ms(m.stats()["mean"]), f"{m.quality:.4f}", "yes" if m.remeasured else "",
        )
    console.print(table)


def _print_presets(report, key: str) -> None:
    """The presets, which of them share a setting, and their warnings (on stderr)."""
    q = report.percentile
    presets = Table(title="presets")
    for col in ("preset", "thresholds", f"{key} ms", "quality"):
        presets.add_column(col, justify="right")
    for name, m in report.presets.items():
        presets.add_row(name, fmt_values(m.thresholds), _ms(m.latency(q)), f"{m.quality:.4f}")
    console.print(presets)
    for name, entry in report.data["presets"].items():
        if entry["description"].startswith("same setting as"):
            console.print(f"{name}: {escape(entry['description'])}")
        if entry.get("warning"):
            err_console.print(f"[bold yellow]warning:[/] preset {name}: {escape(entry['warning'])}")


def _print_verdict(report, key: str) -> None:
    """Whether a setting meets the target, and the chosen one."""
    q, batch, chosen, ref = report.percentile, report.batch, report.chosen, report.reference
    metric_name = report.data["measurement"]["metric"]
    if report.meets_target:
        console.print(
            f"[bold green]chosen[/] thresholds {fmt_values(chosen.thresholds)}: {key} {_ms(chosen.latency(q))} ms "
            f"<= {report.target_ms:g} ms at batch {batch}; quality {chosen.quality:.4f} ({escape(metric_name)}); "
            f"nothing paused: {key} {_ms(ref.latency(q))} ms"
        )
    else:
        console.print(
            f"[bold red]no setting meets {report.target_ms:g} ms {key} at batch {batch}[/]: the fastest measured, "
            f"thresholds {fmt_values(chosen.thresholds)}, takes {key} {_ms(chosen.latency(q))} ms "
            f"(quality {chosen.quality:.4f}; nothing paused: {_ms(ref.latency(q))} ms)"
        )


def _print_heldout(report, key: str) -> None:
    """The held-out check's verdict, and how much the machine's load moved meanwhile."""
    check, q = report.heldout, report.percentile
    if check is None:
        return
    verdict = "[bold green]PASS[/]" if check.passed else "[bold red]FAIL[/]"
    console.print(
        f"held-out check on {len(check.images)} images not used for calibration: {key} {_ms(check.latency_ms)} ms "
        f"vs limit {_ms(check.limit_ms)} ms (target {check.target_ms:g} ms + {100 * check.tolerance:g} %): {verdict}; "
        f"quality {check.latency.quality:.4f}; nothing paused there: {key} {_ms(check.reference.latency(q))} ms"
    )
    if check.load_factor is not None and abs(check.load_factor - 1) > 0.05:
        console.print(
            f"  the machine ran {abs(check.load_factor - 1) * 100:.0f} % {'slower' if check.load_factor > 1 else 'faster'} "
            f"during the check than during calibration (nothing paused, median: {_ms(check.reference.latency(50))} vs "
            f"{_ms(check.calibration_reference_ms)} ms); corrected for that: {key} {_ms(check.corrected_ms)} ms"
        )
