#!/usr/bin/env python3
"""Where avit's CPU artifact stands against PyTorch eager (baseline for issue 7), on the real model.

One interleaved run on held-out photos (448 px = 1024 tokens) of the same adaptive model, at the same
thresholds and thread count:

* ``torch eager`` — ``AdaptiveViT`` in PyTorch (real removal through the ``torch.ops.avit`` reference ops),
* ``onnx padded`` — the adaptive ONNX in ONNX Runtime, the whole batch in one call (images padded to the
  batch's largest token count after each pause point),
* ``onnx per image`` — the same ONNX, one call per image (every image runs at its own token count),
* ``onnx static`` — the static export of the same weights (nothing paused, the full model).

Reports ms / image (median over rounds), speedup of each ONNX variant over torch eager (median of
per-round ratios), and pixel agreement with the full model. Then ONNX Runtime thread scaling (1 vs 2
intra-op threads) of the adaptive model at batch 1. Writes JSON.

    python benchmarks/eager_vs_onnx.py --checkpoint artifacts/real/model.ckpt \\
        --adaptive artifacts/methods/entropy.onnx --static artifacts/methods/static.onnx
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from rich.console import Console
from rich.table import Table

from avit import __version__
from avit._io import atomic_write
from avit.data import find_photos
from avit.models import load_checkpoint
from avit.profiling.metrics import agreement
from avit.runtime import AdaptiveSession


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts/real/model.ckpt"))
    parser.add_argument("--adaptive", type=Path, default=Path("artifacts/methods/entropy.onnx"), help="its adaptive export")
    parser.add_argument("--static", type=Path, default=Path("artifacts/methods/static.onnx"), help="its static export")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--batch", default="1,4")
    parser.add_argument("--thresholds", default="0:0,0.5:0.5,0.6:0.6", help="settings, e.g. 0:0,0.5:0.5")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/eager_vs_onnx.json"))
    args = parser.parse_args()
    console = Console()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(args.checkpoint)
    adaptive = AdaptiveSession(args.adaptive, intra_op_threads=args.threads)
    static = AdaptiveSession(args.static, intra_op_threads=args.threads)
    photos = find_photos("heldout")[: args.images]
    x = adaptive.load_images(photos)
    settings = [[float(v) for v in s.split(":")] for s in args.thresholds.split(",")]
    full = np.concatenate([static.run(x[i : i + 1]).logits for i in range(len(x))])
    variants = ("torch eager", "onnx padded", "onnx per image")
    payload = {"benchmark": "eager_vs_onnx", "avit_version": __version__, "torch": torch.__version__,
               "onnxruntime": ort.__version__, "threads": args.threads, "photos": [p.name for p in photos],
               "rounds": args.rounds, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               "rows": [], "thread_scaling": {}}
    table = Table(title=f"{len(x)} held-out photos, 448 px, {args.threads} threads: ms / image (speedup over torch eager)")
    for col in ("batch", "thresholds", "tokens kept", "onnx static", *variants, "pixel agreement"):
        table.add_column(col, justify="right")

    def run_variant(name: str, chunk: np.ndarray, t: list[float]):
        if name == "torch eager":
            with torch.inference_mode():
                logits, kept = model(torch.from_numpy(chunk), torch.tensor(t))
            return logits.numpy(), kept.numpy()
        if name == "onnx padded":
            r = adaptive.run(chunk, t)
            return r.logits, r.tokens_kept
        rs = [adaptive.run(chunk[i : i + 1], t) for i in range(len(chunk))]
        return np.concatenate([r.logits for r in rs]), np.concatenate([r.tokens_kept for r in rs])

    for batch in [int(b) for b in args.batch.split(",")]:
        n = (len(x) // batch) * batch
        chunks = [x[i : i + batch] for i in range(0, n, batch)]
        times = np.zeros((args.rounds, len(settings), len(variants)))
        static_ms = np.zeros(args.rounds)
        outputs = {}
        for r in range(args.rounds + 1):  # round 0 = warm-up
            for c in chunks:
                ms, _ = timed(lambda: static.run(c))
                if r:
                    static_ms[r - 1] += ms
                for s, t in enumerate(settings):
                    for v, name in enumerate(variants):
                        ms, out = timed(lambda: run_variant(name, c, t))
                        if r:
                            times[r - 1, s, v] += ms
                        else:
                            outputs.setdefault((s, v), []).append(out)
        for s, t in enumerate(settings):
            logits = {v: np.concatenate([o[0] for o in outputs[(s, v)]]) for v in range(len(variants))}
            kept = np.concatenate([o[1] for o in outputs[(s, 0)]]).mean(axis=0)
            agree = agreement(logits[1], full[:n])
            row = {"batch": batch, "thresholds": t, "tokens_kept": kept.tolist(),
                   "static_ms": float(np.median(static_ms)) / n,
                   "ms": {name: float(np.median(times[:, s, v])) / n for v, name in enumerate(variants)},
                   "speedup_over_eager": {name: float(np.median(times[:, s, 0] / times[:, s, v])) for v, name in enumerate(variants)},
                   "pixel_agreement": agree["pixel_agreement"], "iou": agree["iou"],
                   "max_abs_diff_eager_vs_onnx": float(np.abs(logits[0] - logits[1]).max())}
            payload["rows"].append(row)
            table.add_row(str(batch), ",".join(f"{v:g}" for v in t), ", ".join(f"{k:.0f}" for k in kept),
                          f"{row['static_ms']:.0f}",
                          *[f"{row['ms'][nm]:.0f} ({row['speedup_over_eager'][nm]:.2f}×)" for nm in variants],
                          f"{100 * agree['pixel_agreement']:.2f} %")
    console.print(table)

    # thread scaling of the adaptive ONNX model, batch 1, one mid setting; interleaved
    t = settings[min(1, len(settings) - 1)]
    sessions = {k: AdaptiveSession(args.adaptive, intra_op_threads=k) for k in (1, 2)}
    per = {1: [], 2: []}
    for r in range(args.rounds + 1):
        row = {1: 0.0, 2: 0.0}
        for i in range(len(x)):
            for k, sess in sessions.items():
                row[k] += sess.run(x[i : i + 1], t).latency_ms
        if r:
            for k in row:
                per[k].append(row[k] / len(x))
    scaling = {"thresholds": t, "ms_1_thread": float(np.median(per[1])), "ms_2_threads": float(np.median(per[2])),
               "speedup_2_over_1": float(np.median(np.array(per[1]) / np.array(per[2])))}
    payload["thread_scaling"] = scaling
    console.print(f"ONNX Runtime threads, batch 1, thresholds {t}: 1 thread {scaling['ms_1_thread']:.0f} ms, "
                  f"2 threads {scaling['ms_2_threads']:.0f} ms ({scaling['speedup_2_over_1']:.2f}×)")
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
