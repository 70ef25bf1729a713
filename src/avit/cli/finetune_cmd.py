"""``avit finetune``: pause-aware fine-tuning of any avit checkpoint (token removal in the loop)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from avit.cli._app import app, cli_errors, console, fmt_values


@app.command()
@cli_errors
def finetune(
    checkpoint: Annotated[Path, typer.Argument(help="avit checkpoint to fine-tune (adapted or imported).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Fine-tuned checkpoint to write (.ckpt).")],
    finetune_steps: Annotated[Optional[int], typer.Option(help="Optimiser steps (default: the library's, 600; 0 with --finetune-minutes: until the time is spent).")] = None,
    finetune_minutes: Annotated[Optional[float], typer.Option(help="Wall-time cap of the training loop in minutes (caching excluded).")] = None,
    views: Annotated[Optional[int], typer.Option(help="Augmented training views cached.")] = None,
    adapter_rank: Annotated[Optional[int], typer.Option(help="Rank of the pause adapters (0 = none).")] = None,
    adapter_lr: Annotated[Optional[float], typer.Option(help="Learning rate of the pause adapters.")] = None,
    train_blocks: Annotated[bool, typer.Option("--train-blocks", help="Also train the blocks' Linear layers (moves the nothing-paused output).")] = False,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate of the blocks (with --train-blocks).")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="Original checkpoint to distil to (needed when the input's blocks were fine-tuned).")] = None,
    device: Annotated[str, typer.Option(help="auto (cuda when torch sees one) | cpu | cuda | cuda:N")] = "auto",
    target: Annotated[float, typer.Option(help="Agreement the default thresholds must keep on every training fold.")] = 0.995,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Pause-aware fine-tuning with real token removal in the loop, distilling to the original; new default thresholds."""
    from avit.adapt.finetune import FinetuneSettings, finetune_checkpoint

    settings = FinetuneSettings(seed=seed)
    if finetune_steps is not None:
        settings.steps = finetune_steps
    settings.minutes = finetune_minutes
    if views is not None:
        settings.views = views
    if lr is not None:
        settings.lr = lr
    if adapter_rank is not None:
        settings.adapter_rank = adapter_rank
    if adapter_lr is not None:
        settings.adapter_lr = adapter_lr
    settings.train_blocks = train_blocks
    report = finetune_checkpoint(
        checkpoint, output, settings, reference=reference, device=device, target_agreement=target, progress=True
    )
    t = report.training
    table = Table(title="default thresholds on the training photos (agreement with the original)")
    for col in ("thresholds", "tokens kept", "mean agreement", "worst fold"):
        table.add_column(col, justify="right")
    for row in report.threshold_rows:
        kept = [sum(k[p] for k in row["tokens_kept"]) / len(row["tokens_kept"]) for p in range(len(row["thresholds"]))]
        mean = sum(row["pixel_agreement"]) / len(row["pixel_agreement"])
        table.add_row(fmt_values(row["thresholds"]), ", ".join(f"{k:.0f}" for k in kept), f"{100 * mean:.2f} %",
                      f"{100 * row['worst_fold']:.2f} %")
    console.print(table)
    console.print(
        f"wrote {escape(str(report.checkpoint))}: {t.steps} steps on {t.views} views of {len(t.images)} photos "
        f"({t.device}, {t.seconds:.0f} s + {t.cache_seconds:.0f} s caching), loss {t.loss_first:.4f} → {t.loss_last:.4f}; "
        f"default thresholds {fmt_values(report.default_thresholds)} (expected agreement {100 * report.expected_agreement:.2f} %)"
    )
