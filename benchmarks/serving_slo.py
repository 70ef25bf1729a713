"""Serving under a latency SLO: open-loop Poisson load against `avit serve --slo-ms` and fixed settings.

    python benchmarks/serving_slo.py model.onnx --static model.static.onnx [--loads 0.5,1,1.25,1.5,2]
        [--duration-s 60] [--slo-factor 4] [--triton] [--out benchmarks/results/serving_slo.json]

The model needs a calibration beside it (`avit calibrate model.onnx --target-latency-ms ...`, on the training
photos: its Pareto front is the controller's ladder). Requests are the held-out photos (never seen by
`avit adapt` or `avit calibrate`), each as is and mirrored, uploaded as PNG over HTTP on 127.0.0.1.

1. **Capacity**: one `avit serve` (no SLO) answers sequential requests at the model's defaults; their median
   end-to-end time is one request's p50, its inverse the capacity at the defaults. The SLO is
   ``--slo-factor`` (4) × that p50.
2. **Load**: for each load L in ``--loads`` × that capacity, Poisson arrivals (open loop: every request is sent
   at its arrival time by a pool of client threads, whatever the server does) for ``--duration-s`` seconds
   against `avit serve --slo-ms SLO` (requests give no knob). For comparison, in the same run: fixed defaults
   at 1.25× and 1.5× (`avit serve` without an SLO, the default `--max-queue 64`), and at 1.25× the best *fixed*
   setting that meets the SLO: the calibration front's settings are tried from best quality down, each for
   the same time, until one keeps ≥ 99 % of all requests within the SLO (settings whose predicted
   utilisation — calibrated model time plus the measured time outside the model, × the arrival rate — is
   ≥ 0.95 cannot hold a queue and are skipped; the predictions are in the JSON).
3. **Quality**: every answer names the thresholds it ran at; its pixel agreement with the ORIGINAL model
   (`--static`, the original weights' export) is computed offline for that photo at those thresholds (mean
   and worst over the answers).
4. ``--triton``: the same controller in Triton's python backend (`avit triton-repo --slo-ms`) at 1.25×; the
   client sends the preprocessed tensor (tritonclient HTTP), as Triton takes it.

Reported per (mode, load): requests offered, answered, shed (503 / Triton's queue policy), within the SLO
(of all offered; shed = not within), p50 / p99 end-to-end latency of the answered, mean / worst agreement,
share of answers at the defaults or better, mean fraction of tokens kept. JSON and a plot (latency and
agreement against load). Bounded: each step sends at most ``--max-requests`` and stops after its duration
plus the SLO; 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from avit.data import find_photos, load_image
from avit.evaluation.metrics import labels, pixel_agreement
from avit.runtime import AdaptiveSession
from avit.runtime.slo import settings_from_calibration
from avit.serving.triton.server import free_port
from serving_load import multipart, wait_health  # the same upload and readiness wait as the load test

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model and the vector units that matter (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    family = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cpu family")), "?")
    units = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("VNNI", "avx512_vnni"), ("BF16", "avx512_bf16"),
                                     ("AMX", "amx_tile")) if flag in flags]
    return f"{model} (family {family}, {os.cpu_count()} cores; {', '.join(units)})"


def photos(limit: int) -> list[tuple[str, np.ndarray]]:
    """Held-out photos, each as is and mirrored: ``(name, RGB uint8 [H, W, 3])``."""
    found = find_photos("heldout")[:limit]
    if not found:
        raise SystemExit("no held-out photos: pip install -e '.[demo]'")
    out = []
    for path in found:
        rgb = load_image(path)
        out += [(path.stem, rgb), (path.stem + "-mirrored", np.ascontiguousarray(rgb[:, ::-1]))]
    return out


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """`avit serve` in a subprocess on a free loopback port (stopped with SIGINT)."""

    def __init__(self, model: Path, log: Path, *args: str) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "avit.cli", "serve", str(model), "--port", str(self.port), "--max-batch", "1",
             "--max-wait-ms", "0", "--request-timeout-s", "120", "--log-level", "warning", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        wait_health(f"http://127.0.0.1:{self.port}", self.proc, timeout=300)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            return r.read().decode()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def post(port: int, body: bytes, ctype: str, query: str) -> tuple[int, dict, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    try:
        conn.request("POST", f"/predict?mask=false{query}", body=body, headers={"Content-Type": ctype})
        answer = conn.getresponse()
        payload = answer.read()
        seconds = time.perf_counter() - started
        return answer.status, (json.loads(payload) if payload else {}), seconds
    except (OSError, http.client.HTTPException) as exc:
        return -1, {"error": type(exc).__name__}, time.perf_counter() - started
    finally:
        conn.close()


def poisson_run(send, rate_rps: float, duration_s: float, max_requests: int, n_images: int, seed: int) -> list[dict]:
    """Open loop: request k is sent at its Poisson arrival time (image k mod n) whatever came back before."""
    rng = np.random.default_rng(seed)
    times, t = [], 0.0
    while len(times) < max_requests:
        t += rng.exponential(1.0 / rate_rps)
        if t > duration_s:
            break
        times.append(t)
    results: list[dict] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        row = send(k % n_images)
        row["image"] = k % n_images
        row["sent_s"] = times[k]
        with lock:
            results.append(row)

    with ThreadPoolExecutor(max_workers=256) as pool:
        start = time.perf_counter()
        for k, at in enumerate(times):
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, k)
    return results


def summarize(rows: list[dict], slo_ms: float, agreement: dict, defaults_key: str, top_quality: dict, num_patches: int) -> dict:
    answered = [r for r in rows if r["status"] == 200]
    shed = [r for r in rows if r["status"] in (503, "shed")]
    errors = [r for r in rows if r["status"] not in (200, 503, "shed")]
    ms = np.asarray([r["seconds"] * 1e3 for r in answered])
    agree = np.asarray([agreement[(r["image"], r["key"])] for r in answered]) if answered else np.asarray([])
    kept = np.asarray([np.mean(r["tokens_kept"]) / num_patches for r in answered]) if answered else np.asarray([])
    settings: dict[str, int] = {}
    for r in answered:
        settings[r["key"]] = settings.get(r["key"], 0) + 1
    at_defaults_or_better = sum(1 for r in answered if top_quality.get(r["key"], 0.0) >= top_quality[defaults_key])
    n = len(rows)
    return {
        "offered": n,
        "answered": len(answered),
        "shed_pct": round(100 * len(shed) / n, 2) if n else None,
        "errors": len(errors),
        "within_slo_pct": round(100 * sum(1 for v in ms if v <= slo_ms) / n, 2) if n else None,
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms.size else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms.size else None,
        "max_ms": round(float(ms.max()), 1) if ms.size else None,
        "agreement_mean_pct": round(100 * float(agree.mean()), 2) if agree.size else None,
        "agreement_worst_pct": round(100 * float(agree.min()), 2) if agree.size else None,
        "at_defaults_or_better_pct": round(100 * at_defaults_or_better / len(answered), 2) if answered else None,
        "tokens_kept_mean_pct": round(100 * float(kept.mean()), 1) if kept.size else None,
        "answers_per_setting": settings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--static", type=Path, required=True, help="the ORIGINAL weights' static export (quality reference)")
    parser.add_argument("--loads", default="0.5,1,1.25,1.5,2", help="multiples of the defaults' capacity")
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--max-requests", type=int, default=400, help="per step")
    parser.add_argument("--slo-factor", type=float, default=4.0, help="SLO = factor × one request's p50 at the defaults")
    parser.add_argument("--photos", type=int, default=8, help="held-out photos (each also mirrored)")
    parser.add_argument("--triton", action="store_true", help="also the Triton python backend under the SLO at 1.25×")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_slo.json")
    args = parser.parse_args()
    loads = [float(v) for v in args.loads.split(",")]
    t_start = time.perf_counter()

    session = AdaptiveSession(args.model, calibration=True)
    ladder = settings_from_calibration(session.calibration, session.thresholds(None).tolist())
    defaults_key = ",".join(f"{t:g}" for t in ladder[0].thresholds)

    def key(thresholds) -> str:
        return ",".join(f"{float(t):g}" for t in np.float32(thresholds))

    images = photos(args.photos)
    uploads = [multipart(png(rgb), f"{name}.png") for name, rgb in images]
    x = [session.preprocess(rgb)[None] for _, rgb in images]

    # offline quality: every photo at every setting of the ladder, against the original model
    static = AdaptiveSession(args.static, calibration=False)
    reference = [labels(static.run(xi).logits) for xi in x]
    agreement: dict[tuple[int, str], float] = {}
    for s in ladder:
        for i, xi in enumerate(x):
            agreement[(i, key(s.thresholds))] = pixel_agreement(labels(session.run(xi, s.thresholds).logits), reference[i])
    quality = {key(s.thresholds): float(np.mean([agreement[(i, key(s.thresholds))] for i in range(len(x))])) for s in ladder}
    defaults_key = key(ladder[0].thresholds)
    print("ladder (calibration front, defaults on top): agreement with the original on the held-out requests")
    for s in ladder:
        print(f"  {s.label:>24s}  {s.per_image_ms:7.1f} ms/image (calibrated)  {100 * quality[key(s.thresholds)]:6.2f} %")
    del static

    tmp = Path(tempfile.mkdtemp(prefix="avit-slo-"))
    results: dict = {"steps": []}

    def record(rows: list[dict]) -> list[dict]:
        for r in rows:
            if r["status"] == 200:
                r["key"] = key(r["answer"]["thresholds"])
                r["tokens_kept"] = r["answer"]["tokens_kept"]
                r["setting"] = r["answer"].get("setting")
                if r["key"] not in quality:  # a setting outside the ladder (not expected): measure it now
                    for i, xi in enumerate(x):
                        agreement[(i, r["key"])] = pixel_agreement(labels(session.run(xi, r["answer"]["thresholds"]).logits), reference[i])
                    quality[r["key"]] = float(np.mean([agreement[(i, r["key"])] for i in range(len(x))]))
            r.pop("answer", None)
        return rows

    def http_send(port: int, query: str):
        def send(i: int) -> dict:
            status, answer, seconds = post(port, *uploads[i], query)
            return {"status": status, "answer": answer, "seconds": seconds}
        return send

    # 1. capacity at the defaults, sequential, end to end
    fixed = Server(args.model, tmp / "fixed.log")
    try:
        for i in range(3):
            post(fixed.port, *uploads[i % len(uploads)], "")  # warm-up
        lone = [post(fixed.port, *uploads[i % len(uploads)], "")[2] * 1e3 for i in range(2 * len(uploads))]
        p50 = float(np.median(lone))
        capacity = 1e3 / p50
        slo_ms = args.slo_factor * p50
        print(f"one request at the defaults: p50 {p50:.1f} ms end to end → capacity {capacity:.3f} req/s; SLO {slo_ms:.0f} ms")
        results.update(single_request_p50_ms=round(p50, 1), capacity_rps=round(capacity, 4), slo_ms=round(slo_ms, 1))

        def step(mode: str, load: float, server_port: int, query: str, seed: int, send=None) -> dict:
            rows = poisson_run(send or http_send(server_port, query), load * capacity, args.duration_s, args.max_requests,
                               len(uploads), seed)
            row = {"mode": mode, "load": load, **summarize(record(rows), slo_ms, agreement, defaults_key, quality, session.info.num_patches)}
            results["steps"].append(row)
            print(f"{mode:>28s} {load:5.2f}×: within SLO {row['within_slo_pct']:6.2f} %  shed {row['shed_pct']:5.2f} %  p50 {row['p50_ms']} "
                  f"p99 {row['p99_ms']} ms  agreement mean {row['agreement_mean_pct']} worst {row['agreement_worst_pct']} %  "
                  f"at defaults or better {row['at_defaults_or_better_pct']} %  errors {row['errors']}", flush=True)
            return row

        # 2a. fixed defaults at 1.25× and 1.5×; 2b. best fixed setting at 1.25× (from the front, best quality down)
        for load in (1.25, 1.5):
            step("fixed defaults", load, fixed.port, "", seed=int(load * 100))
        # a fixed setting whose predicted utilisation at 1.25× (calibrated model time + the measured time outside
        # the model, per request) is ≥ 0.95 cannot hold a queue: it is skipped, and the prediction reported
        outside_ms = max(0.0, p50 - ladder[0].per_image_ms)
        results["fixed_predicted_utilisation_at_1.25"] = {
            s.label: round(1.25 * capacity * (s.per_image_ms + outside_ms) / 1e3, 3) for s in ladder}
        candidates = [s for s in ladder[1:] if 1.25 * capacity * (s.per_image_ms + outside_ms) / 1e3 < 0.95] or ladder[-1:]
        for s in candidates:
            row = step(f"fixed {s.label}", 1.25, fixed.port, "&thresholds=" + key(s.thresholds), seed=125)
            row["setting_quality_pct"] = round(100 * quality[key(s.thresholds)], 2)
            if row["within_slo_pct"] >= 99.0:
                results["best_fixed_at_1.25"] = {"setting": s.label, **row}
                break
    finally:
        fixed.stop()

    # 2c. the controller at every load
    slo_server = Server(args.model, tmp / "slo.log", "--slo-ms", f"{slo_ms:.1f}")
    try:
        for load in loads:
            step("slo", load, slo_server.port, "", seed=int(load * 100))
        results["metrics_text_tail"] = slo_server.metrics()[-2000:]
    finally:
        slo_server.stop()

    # 4. Triton at 1.25×
    if args.triton:
        results["triton"] = triton_step(args, x, slo_ms, capacity, key, record, summarize, agreement, defaults_key, quality,
                                        session, tmp)

    results.update(
        model=args.model.name, static=args.static.name, cpu=cpu_name(), loads=loads, duration_s=args.duration_s,
        slo_factor=args.slo_factor, photos=[name for name, _ in images],
        ladder=[{"name": s.label, "thresholds": list(s.thresholds), "calibrated_ms_per_image": round(s.per_image_ms, 1),
                 "calibration_quality": s.quality, "heldout_agreement_pct": round(100 * quality[key(s.thresholds)], 2)} for s in ladder],
        seconds=round(time.perf_counter() - t_start),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')} ({results['seconds']} s)")


def triton_step(args, x, slo_ms, capacity, key, record, summarize, agreement, defaults_key, quality, session, tmp) -> dict:
    """The Triton python backend with the same controller (avit triton-repo --slo-ms) at 1.25× the capacity."""
    import tritonclient.http as thttp
    from tritonclient.utils import InferenceServerException

    from avit.serving.triton import TritonServer, write_triton_repository

    # max_batch 8, no batcher delay: an execute call gets every request waiting (up to 8), which is all of
    # Triton's queue this backend can see
    repo = write_triton_repository(args.model, tmp / "repo", name="model", backend="python", max_batch=8, instances=1,
                                   max_queue_delay_us=0, max_queue_size=256, slo_ms=slo_ms)
    server = TritonServer(repo.root, log=tmp / "triton.log")
    server.start(timeout_s=300)
    local = threading.local()

    def send(i: int) -> dict:
        if not hasattr(local, "client"):
            local.client = thttp.InferenceServerClient(server.http_address, connection_timeout=180, network_timeout=180)
        inputs = [thttp.InferInput("images", list(x[i].shape), "FP32")]
        inputs[0].set_data_from_numpy(x[i])
        wanted = [thttp.InferRequestedOutput(n, binary_data=True) for n in ("tokens_kept", "pause_thresholds_used")]
        started = time.perf_counter()
        try:
            out = local.client.infer("model", inputs, outputs=wanted)
            answer = {"thresholds": out.as_numpy("pause_thresholds_used")[0].tolist(), "tokens_kept": out.as_numpy("tokens_kept")[0].tolist()}
            return {"status": 200, "answer": answer, "seconds": time.perf_counter() - started}
        except InferenceServerException as exc:
            shed = "timeout" in str(exc).lower() or "queue" in str(exc).lower()
            return {"status": "shed" if shed else str(exc.status()), "seconds": time.perf_counter() - started}
    try:
        for i in range(3):
            send(i % len(x))
        rows = poisson_run(send, 1.25 * capacity, args.duration_s, args.max_requests, len(x), seed=125)
        row = {"mode": "triton slo", "load": 1.25, **summarize(record(rows), slo_ms, agreement, defaults_key, quality, session.info.num_patches)}
        print(f"{'triton slo':>28s}  1.25×: within SLO {row['within_slo_pct']} %  shed {row['shed_pct']} %  p99 {row['p99_ms']} ms  "
              f"agreement mean {row['agreement_mean_pct']} %", flush=True)
        return row
    finally:
        server.stop()


def plot(results: dict, path: Path) -> None:
    """Two panels against load: p99 latency (with the SLO) and mean agreement, per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    modes: dict[str, list[dict]] = {}
    for row in results["steps"] + ([results["triton"]] if results.get("triton") else []):
        name = "fixed (best at 1.25×)" if row["mode"].startswith("fixed ") and row["mode"] != "fixed defaults" else row["mode"]
        modes.setdefault(name, []).append(row)
    for name, rows in modes.items():
        rows = sorted(rows, key=lambda r: r["load"])
        loads = [r["load"] for r in rows]
        left.plot(loads, [r["p99_ms"] for r in rows], "o-", label=name)
        right.plot(loads, [r["agreement_mean_pct"] for r in rows], "o-", label=name)
    left.axhline(results["slo_ms"], color="grey", ls="--", label="SLO")
    left.set(xlabel="load (× the defaults' capacity)", ylabel="p99 latency of answers, ms (log)", title="latency", yscale="log")
    right.set(xlabel="load (× the defaults' capacity)", ylabel="mean pixel agreement vs original, %", title="quality")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    fig.suptitle(f"avit serve --slo-ms {results['slo_ms']:.0f} — {results['model']} — {results['cpu']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--replot":  # the plot again from a JSON this script wrote
        plot(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[2]).with_suffix(".png"))
    else:
        main()
