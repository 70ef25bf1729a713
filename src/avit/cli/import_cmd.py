"""``avit import`` (foreign checkpoint layouts → avit checkpoint) and ``avit acmize`` (MLPs → ACM learners).

Registered on the ``avit`` app of :mod:`avit.cli._app`; :mod:`avit.cli.main` imports this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from avit.cli._app import app, cli_errors, console, parse_ints
from avit.errors import InputError



def _overrides(config: Optional[Path], **options: Any) -> dict[str, Any]:
    """Config fields from a JSON file, then the command-line options that were given."""
    fields: dict[str, Any] = {}
    if config is not None:
        try:
            fields = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"--config {config}: {exc}") from None
        if not isinstance(fields, dict):
            raise InputError(f"--config {config} must hold a JSON object of AdaptiveViTConfig fields")
    fields.update({k: v for k, v in options.items() if v is not None})
    return fields


@app.command("import")
@cli_errors
def import_command(
    checkpoint: Annotated[Path, typer.Argument(help="State dict to import (.pth / .pt / .bin; torch.load(weights_only=True)).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="avit checkpoint to write (.ckpt).")],
    source: Annotated[str, typer.Option("--from", help="Layout: timm | mmseg-dtop | cropr.")] = "timm",
    config: Annotated[Optional[Path], typer.Option(help="JSON object of AdaptiveViTConfig fields to set (e.g. num_classes, decoder).")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Input size in pixels (default: the source position-embedding grid).")] = None,
    num_heads: Annotated[Optional[int], typer.Option(help="Attention heads (default: embed_dim / 64, as in every timm ViT).")] = None,
    pause_points: Annotated[Optional[str], typer.Option(help="Block counts after which tokens may pause, e.g. 4,8.")] = None,
    policy: Annotated[Optional[str], typer.Option(help="entropy | confidence | keep_ratio | dtop | acm (default per layout).")] = None,
    fill: Annotated[Optional[str], typer.Option(help="predict | stale | canvas.")] = None,
) -> None:
    """Map a timm / DToP (mmseg) / Token Cropr state dict onto an adaptive ViT and save it as an avit checkpoint."""
    from avit.models import save_checkpoint
    from avit.models.importers import FORMATS, import_checkpoint

    if source not in FORMATS:
        raise InputError(f"--from must be one of {', '.join(FORMATS)}, got {source!r}")
    fields = _overrides(
        config, img_size=img_size, num_heads=num_heads, policy=policy, fill=fill,
        pause_points=parse_ints(pause_points) if pause_points is not None else None,
    )
    model, report = import_checkpoint(source, checkpoint, **fields)
    path = save_checkpoint(model, output, source=f"import {source} {checkpoint.name}", import_report=report.to_dict())
    table = Table(title=f"{escape(checkpoint.name)} ({source}) → {escape(str(path))}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    cfg = model.config
    table.add_row("model", f"{cfg.depth} blocks, width {cfg.embed_dim}, {cfg.num_heads} heads, patch {cfg.patch_size}, "
                  f"{cfg.img_size[0]}×{cfg.img_size[1]} px, {cfg.num_classes} classes")
    table.add_row("policy", f"{cfg.policy}, pause points {list(cfg.pause_points)}, fill {cfg.fill}")
    table.add_row("mapped", f"{report.mapped} tensors")
    for group, reason in report.skipped.items():
        table.add_row(f"skipped {escape(group)}", escape(reason))
    table.add_row("initialised", ", ".join(report.initialised) or "-")
    for note in report.notes:
        table.add_row("note", escape(note))
    console.print(table)


@app.command("acmize")
@cli_errors
def acmize_command(
    checkpoint: Annotated[Path, typer.Argument(help="avit checkpoint to convert (.ckpt).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="ACM checkpoint to write (.ckpt).")],
    learners: Annotated[int, typer.Option(min=2, help="Learners per MLP (equal slices of its hidden units).")] = 4,
    pause_points: Annotated[Optional[str], typer.Option(help="Blocks where ACM segments start (one tolerance input each); default: the checkpoint's.")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder of calibration images. Default: the installed training photos.")] = None,
    max_images: Annotated[int, typer.Option(min=1, help="Calibration images to use at most.")] = 16,
    gate_steps: Annotated[int, typer.Option(min=0, help="Adam steps per gate.")] = 300,
    max_tokens: Annotated[int, typer.Option(min=16, help="Calibration tokens per block.")] = 8192,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Split every MLP from the first pause point on into learners (exact) and fit their gates on images."""
    import torch

    from avit.data.images import load_batch
    from avit.models import load_checkpoint, save_checkpoint
    from avit.adapt.acm import acmize
    from avit.data.files import image_files

    model, meta = load_checkpoint(checkpoint)
    cfg = model.config
    paths = image_files(images, "train", max_images)
    x = torch.from_numpy(load_batch(paths, cfg.img_size, cfg.mean, cfg.std))
    points = parse_ints(pause_points) if pause_points is not None else None
    acm, report = acmize(
        model, x, learners=learners, pause_points=points, steps=gate_steps, max_tokens=max_tokens, seed=seed,
        log=lambda m: console.print(f"  {escape(m)}"),
    )
    path = save_checkpoint(
        acm, output, source=f"acmize {checkpoint.name}", parent=meta,
        acm={"learners": learners, "images": len(paths), "seconds": round(report.seconds, 1)},
    )
    console.print(
        f"wrote {escape(str(path))}: {len(report.blocks)} ACM blocks × {learners} learners from {len(paths)} images "
        f"in {report.seconds:.0f} s; tolerance input = pause_thresholds (0 = every learner, 1 = one learner, >1 = none)"
    )
