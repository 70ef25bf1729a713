"""GPU cost of the TensorRT plugins' CUDA kernels against the same ops built from stock PyTorch CUDA ops.

    PYTHONPATH=src python3 benchmarks/plugin_kernels_gpu.py [--batches 1 4 16] [--tokens 1024] [--dim 384]
        [--keep 0.5] [--classes 2 150] [--repeats 31] [--calls 20] [-o benchmarks/results/plugin_kernels_gpu.json]

Sizes default to a ViT-S/14 pause point at 448 px: n = 1024 tokens per image, D = 384 features, half of
the tokens kept (entropy threshold at the median score; keep ratio 0.5), C = 2 (the real model's binary
token head) and C = 150 (ADE20K classes), fp32 and fp16 inputs, every image full (counts = n).

"plugin" runs the plugins' own launch code (``plugins/cuda_test/avit_cuda_kernels.cu`` calls the same
``launch*`` functions as each IPluginV3 ``enqueue``; built with nvcc for the present GPU) on
preallocated buffers; "stock" is ``torch.ops.avit.*`` on CUDA tensors — the PyTorch reference ops,
made of stock ops (log_softmax/exp/sum, compare, cumsum + scatter compaction, stable sort for
keep-ratio, advanced-index gather, boolean-mask index_put for scatter). A select has a data-dependent
output length, so its stock op reads ``m`` back to the host (``int(counts.max())``); "plugin + m" adds
that same device-to-host read of the plugin's size tensor (what a TensorRT engine does for a size
tensor), the like-for-like comparison. "stock, no sync" scatters through a trash row (the ONNX
lowering's Concat + ScatterND + Slice), with no host read.

Two numbers per variant: *wall* = CUDA-event time of ``--calls`` back-to-back calls divided by the
calls, median over ``--repeats`` repeats (variants interleaved within each repeat), in µs — includes
launch overhead (ctypes for the plugin, the PyTorch dispatcher for stock) and host syncs; *GPU* =
summed device time of the kernels, memsets and copies of one call (torch.profiler / CUPTI), in µs, and
how many of them ran per call. Every variant's output is first checked equal to the stock op's.
Writes JSON (device, driver, CUDA, versions, every row) atomically.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

import avit.ops  # noqa: F401  (registers torch.ops.avit.*)
from avit._io import atomic_write
from avit.ops import token_scores

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "plugin_kernels_gpu.json"


def load_cuda_kernels():
    """Import plugins/cuda_test/cuda_kernels.py (builder + ctypes front-end, shared with the GPU tests)."""
    spec = importlib.util.spec_from_file_location("avit_plugin_cuda_kernels", REPO / "plugins" / "cuda_test" / "cuda_kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def wall_us(fns: dict, calls: int, repeats: int) -> dict[str, float]:
    """Median per-call CUDA-event time (µs) of each callable; variants interleaved within each repeat."""
    for fn in fns.values():  # warm-up (allocator, lazy module loading)
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) * 1e3 / calls)
    return {k: statistics.median(v) for k, v in samples.items()}


def gpu_us(fn, calls: int = 10) -> tuple[float | None, float | None]:
    """(device µs per call, device operations per call) from torch.profiler's CUDA activity."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
        events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    except Exception as exc:  # the profiler is an extra; the wall times stand without it
        print(f"profiler unavailable: {exc}", file=sys.stderr)
        return None, None
    if not events:
        return None, None
    return sum(e.time_range.elapsed_us() for e in events) / calls, len(events) / calls


def scatter_no_sync(dst, idx, src, counts):
    """Stock scatter without a host read: padding slots are sent to a trash row (the ONNX lowering's way)."""
    b, big_n, d = dst.shape
    real = torch.arange(idx.shape[1], device=idx.device)[None, :] < counts[:, None]
    target = torch.where(real, torch.where(idx < 0, idx + big_n, idx), big_n)
    out = torch.cat([dst, dst.new_zeros(b, 1, d)], dim=1)
    out.scatter_(1, target[:, :, None].expand(-1, -1, d), src.to(dst.dtype))
    return out[:, :big_n]


def bench_select(ck, op, b, n, c, dtype, keep) -> dict:
    g = torch.Generator().manual_seed(1000 * b + c)
    logits_cpu = (torch.randn(b, n, c, generator=g) * 3).to(dtype)
    if op == "entropy":
        scalar = float(torch.quantile(token_scores(logits_cpu, 0).flatten().double(), 1 - keep))
        stock_op = torch.ops.avit.entropy_select
    else:
        scalar = keep
        stock_op = torch.ops.avit.keep_ratio_select
    logits = logits_cpu.cuda()
    counts = torch.full((b,), n, dtype=torch.int64, device="cuda")
    scalar_t = torch.tensor(scalar, dtype=torch.float32, device="cuda")
    bufs = ck.select_buffers(op, logits)

    want_idx, want_counts = stock_op(logits, counts, scalar_t, 0)
    got_idx, got_counts, m = ck.select(op, logits, counts, scalar_t, 0, bufs=bufs)
    assert torch.equal(got_idx, want_idx) and torch.equal(got_counts, want_counts), f"{op} select differs from stock"

    def plugin():
        ck.launch_select(op, logits, counts, scalar_t, 0, bufs)

    def plugin_m():
        ck.launch_select(op, logits, counts, scalar_t, 0, bufs)
        return int(bufs["size"].item())

    def stock():
        return stock_op(logits, counts, scalar_t, 0)

    fns = {"plugin": plugin, "plugin + m": plugin_m, "stock": stock}
    return {"kept": m, "fns": fns}


def bench_move(ck, op, b, n, d, dtype, keep) -> dict:
    g = torch.Generator().manual_seed(7 * b + d)
    m = int(round(n * keep))
    idx = torch.sort(torch.rand(b, n, generator=g).argsort(dim=1)[:, :m], dim=1).values.cuda()
    counts = torch.full((b,), m, dtype=torch.int64, device="cuda")
    x = torch.randn(b, n, d, generator=g).to(dtype).cuda()
    if op == "gather":
        y = torch.empty(b, m, d, dtype=dtype, device="cuda")
        ck.launch_token_gather(x, idx, y)
        assert torch.equal(y, torch.ops.avit.token_gather(x, idx)), "gather differs from stock"
        fns = {
            "plugin": lambda: ck.launch_token_gather(x, idx, y),
            "stock": lambda: torch.ops.avit.token_gather(x, idx),
        }
    else:
        src = torch.randn(b, m, d, generator=g).to(dtype).cuda()
        out = torch.empty_like(x)
        ck.launch_token_scatter(x, idx, src, counts, out)
        want = torch.ops.avit.token_scatter(x, idx, src, counts)
        assert torch.equal(out, want) and torch.equal(scatter_no_sync(x, idx, src, counts), want), "scatter differs"
        fns = {
            "plugin": lambda: ck.launch_token_scatter(x, idx, src, counts, out),
            "stock": lambda: torch.ops.avit.token_scatter(x, idx, src, counts),
            "stock, no sync": lambda: scatter_no_sync(x, idx, src, counts),
        }
    return {"kept": m, "fns": fns}


def device_info(ck, nvcc: str | None) -> dict:
    props = torch.cuda.get_device_properties(0)
    info = {
        "device": torch.cuda.get_device_name(0),
        "multiprocessors": props.multi_processor_count,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "plugin_cudart": ck.runtime_version,
        "python": platform.python_version(),
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        info["driver"] = smi.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30)
        info["nvcc"] = out.stdout.strip().splitlines()[-1]
    except (OSError, subprocess.SubprocessError, TypeError, IndexError):
        info["nvcc"] = None
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--tokens", type=int, default=1024, help="n = N tokens per image (1024 = 448 px / 14)")
    parser.add_argument("--dim", type=int, default=384, help="D features (ViT-S)")
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of tokens kept")
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 150], help="token-head classes C")
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--calls", type=int, default=20, help="back-to-back calls per timed repeat")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    ck_module = load_cuda_kernels()
    reason = ck_module.unavailable_reason()
    if reason is not None:
        print(f"plugin_kernels_gpu: {reason}", file=sys.stderr)
        return 2
    try:
        ck = ck_module.CudaKernels(ck_module.build_library())
    except RuntimeError as exc:
        print(f"plugin_kernels_gpu: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    info = device_info(ck, ck_module.nvcc_path())
    n, d = args.tokens, args.dim

    cases = []
    for dtype in (torch.float32, torch.float16):
        for op in ("entropy", "ratio"):
            for c in args.classes:
                cases += [(f"{op} select", c, dtype, b, lambda b=b, op=op, c=c, dtype=dtype: bench_select(ck, op, b, n, c, dtype, args.keep)) for b in args.batches]  # noqa: E501
        for op in ("gather", "scatter"):
            cases += [(f"token {op}", None, dtype, b, lambda b=b, op=op, dtype=dtype: bench_move(ck, op, b, n, d, dtype, args.keep)) for b in args.batches]  # noqa: E501

    rows = []
    for name, c, dtype, b, make in cases:
        case = make()
        walls = wall_us(case["fns"], args.calls, args.repeats)
        variants = {}
        for variant, fn in case["fns"].items():
            dev_us, ops = gpu_us(fn)
            variants[variant] = {"wall_us": round(walls[variant], 2),
                                 "gpu_us": None if dev_us is None else round(dev_us, 2),
                                 "gpu_ops_per_call": None if ops is None else round(ops, 2)}  # fmt: skip
        base = "plugin + m" if "plugin + m" in variants else "plugin"
        row = {
            "op": name, "classes": c, "dtype": str(dtype).removeprefix("torch."), "batch": b, "tokens": n,
            "dim": None if c is not None else d, "kept_per_image": case["kept"], "variants": variants,
            "stock_over_plugin_wall": round(variants["stock"]["wall_us"] / variants[base]["wall_us"], 2),
        }  # fmt: skip
        rows.append(row)
        del case
        torch.cuda.empty_cache()

    print_table(info, rows, args)
    result = {
        "benchmark": "plugin_kernels_gpu",
        "command": "PYTHONPATH=src python3 " + " ".join(sys.argv),
        "device": info,
        "settings": {"tokens": n, "dim": d, "keep": args.keep, "classes": args.classes, "batches": args.batches,
                     "repeats": args.repeats, "calls_per_repeat": args.calls, "score_mode": 0, "counts": "all images full"},
        "units": {"wall_us": "µs per call, CUDA events, median of repeats", "gpu_us": "µs of device time per call (profiler)"},
        "rows": rows,
    }  # fmt: skip
    atomic_write(args.output, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    print(f"wrote {args.output}")
    return 0


def print_table(info: dict, rows: list[dict], args) -> None:
    from rich.console import Console
    from rich.table import Table

    def cell(v: dict | None, key: str) -> str:
        if v is None or v.get(key) is None:
            return "-"
        return f"{v[key]:.1f}"

    def ops(v: dict | None) -> str:
        return "-" if v is None or v.get("gpu_ops_per_call") is None else f"{v['gpu_ops_per_call']:g}"

    table = Table(title=f"plugin kernels vs stock PyTorch ops on {info['device']} (driver {info['driver']}, "
                        f"torch {info['torch']}, CUDA {info['torch_cuda']}); n = {args.tokens}, D = {args.dim}, "
                        f"keep {args.keep:g}; µs per call")  # fmt: skip
    for col in ("op", "C", "dtype", "B", "plugin wall", "plugin+m wall", "stock wall", "stock/plugin",
                "plugin GPU (ops)", "stock GPU (ops)", "stock no-sync wall / GPU"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("op", "dtype") else "right")
    for r in rows:
        v = r["variants"]
        p, pm, s, sn = v["plugin"], v.get("plugin + m"), v["stock"], v.get("stock, no sync")
        table.add_row(
            r["op"], "-" if r["classes"] is None else str(r["classes"]), r["dtype"], str(r["batch"]),
            cell(p, "wall_us"), cell(pm, "wall_us"), cell(s, "wall_us"), f"{r['stock_over_plugin_wall']:.1f}x",
            f"{cell(p, 'gpu_us')} ({ops(p)})", f"{cell(s, 'gpu_us')} ({ops(s)})",
            "-" if sn is None else f"{cell(sn, 'wall_us')} / {cell(sn, 'gpu_us')} ({ops(sn)})",
        )  # fmt: skip
    Console(width=200).print(table)


if __name__ == "__main__":
    sys.exit(main())
