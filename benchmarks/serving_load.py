"""Load test on loopback: 1–64 concurrent clients against `avit serve` and a live Triton (python backend).

    python benchmarks/serving_load.py model.onnx [--clients 1,8,64] [--duration-s 30] [--max-requests 3000]
        [--rounds 2] [--backoff-s 1] [--max-queue 8] [--threads 2] [--out benchmarks/results/serving_load.json]

At 448 px (~0.5–1 s per image on 2 cores) the defaults take about 8 minutes.

Both servers run the same model file with avit's runtime (ONNX Runtime, CPU execution provider) at the same
intra-op threads, one model call at a time (`avit serve --workers 1`, one Triton instance), no batching
(max batch 1: on a small CPU a batch runs image by image anyway), and the same queue bound: `avit serve
--max-queue N` and Triton's `max_queue_size: N`. Both are up for the whole run and measured in turns
(avit, Triton, avit, … per client count, the whole sequence repeated ``--rounds`` times; medians), so
both see the same machine load.

What a request is differs, as each server takes it: `avit serve` gets the encoded photo (multipart upload)
and decodes, resizes and normalises it itself, and answers JSON (`mask=false`); Triton gets the
preprocessed float32 tensor [1, 3, H, W] (prepared once per photo before the run, not timed; 2.4 MB at
448 px) and answers tokens kept (binary tensors over HTTP, one tritonclient per client thread).

Each client sends one request at a time (real held-out photos, thresholds cycling through a few settings)
until the step's time or request budget is spent. A refused request (503 / "Exceeds maximum queue size")
is *shed*: the client waits ``--backoff-s`` (1 s) × a uniform jitter in [0.5, 1.5] (so the shed clients do
not retry in lockstep) and goes on — the same for both servers, so both get
the same offered load (avit's ``Retry-After`` is recorded, not obeyed: it asks for a longer wait, which
would favour avit). Triton answers only ``tokens_kept`` (requested outputs), as avit answers no mask. Every
request ends as accepted (200), shed, or an error (connection error, timeout, other status), all counted.

Reported per server and client count: throughput of accepted requests, p50 / p99 latency of accepted
requests, the server's own mean model-call time (avit: ``latency_ms.model``; Triton: ``compute_infer`` from
its statistics), shed count and shed answer times, errors, and keep-alive reconnects (a connection the
server closed while its client slept ``Retry-After`` is reopened and the request sent again, as
urllib3 does; not an error). Targets (issue 15): no connection error; every
shed request answered in < 100 ms; p99 of accepted ≤ (queue + 1) × one request's latency (the p50 at one
client of the same round); Triton's throughput ≥ avit serve's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

from avit.data import find_photos, load_image
from avit.runtime import AdaptiveSession
from avit.serving.triton import TritonServer, write_triton_repository
from avit.serving.triton.server import free_port

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ([0.5, 0.5], [0.6, 0.6], [0.3, 0.3], [0.4, 0.4])


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class Step:
    """Outcomes of one (server, clients) step."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: list[float] = []
        self.shed: list[float] = []
        self.errors: dict[str, int] = {}
        self.model_ms: list[float] = []  # the server's own time for the model call of accepted requests
        self.reconnects = 0  # keep-alive connections the server had closed while the client slept (resent once)
        self.retry_after: list[float] = []  # avit serve's Retry-After values (s), reported, not obeyed
        self.sent = 0

    def record(self, kind: str, seconds: float, detail: str = "") -> None:
        with self.lock:
            if kind == "ok":
                self.accepted.append(seconds)
            elif kind == "shed":
                self.shed.append(seconds)
            else:
                self.errors[detail[:80]] = self.errors.get(detail[:80], 0) + 1

    def take(self, budget: int) -> bool:
        with self.lock:
            if self.sent >= budget:
                return False
            self.sent += 1
            return True


def _exchange(conn: http.client.HTTPConnection, body: bytes, ctype: str, thresholds: str):
    conn.request("POST", f"/predict?mask=false&thresholds={thresholds}", body=body, headers={"Content-Type": ctype})
    answer = conn.getresponse()
    return answer, answer.read()


def avit_client(port: int, uploads, step: Step, index: int, deadline: float, budget: int, backoff_s: float) -> None:
    rng = np.random.default_rng(index)
    conn = None
    k = index
    while time.monotonic() < deadline and step.take(budget):
        body, ctype, thresholds = uploads[k % len(uploads)]
        k += 1
        started = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                answer, payload = _exchange(conn, body, ctype, thresholds)
            else:
                try:  # a reused keep-alive connection the server closed while we slept (Retry-After > keep-alive)
                    answer, payload = _exchange(conn, body, ctype, thresholds)
                except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                    with step.lock:
                        step.reconnects += 1
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                    started = time.perf_counter()
                    answer, payload = _exchange(conn, body, ctype, thresholds)
            seconds = time.perf_counter() - started
            if answer.status == 200:
                step.record("ok", seconds)
                with step.lock:
                    step.model_ms.append(json.loads(payload)["latency_ms"]["model"])
            elif answer.status == 503:
                step.record("shed", seconds)
                with step.lock:
                    step.retry_after.append(float(answer.getheader("Retry-After") or "nan"))
                time.sleep(backoff_s * rng.uniform(0.5, 1.5))
            else:
                step.record("error", seconds, f"HTTP {answer.status}: {payload[:60]!r}")
        except (OSError, http.client.HTTPException) as exc:
            step.record("error", time.perf_counter() - started, f"{type(exc).__name__}")
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


def triton_client(address: str, tensors, step: Step, index: int, deadline: float, budget: int, backoff_s: float) -> None:
    import tritonclient.http as thttp
    from tritonclient.utils import InferenceServerException

    client = thttp.InferenceServerClient(address, connection_timeout=120, network_timeout=120)
    wanted = [thttp.InferRequestedOutput("tokens_kept", binary_data=True)]  # no per-pixel data, as avit's mask=false
    rng = np.random.default_rng(index)
    k = index
    try:
        while time.monotonic() < deadline and step.take(budget):
            x, t = tensors[k % len(tensors)]
            k += 1
            inputs = [thttp.InferInput("images", list(x.shape), "FP32"), thttp.InferInput("pause_thresholds", list(t.shape), "FP32")]
            inputs[0].set_data_from_numpy(x)
            inputs[1].set_data_from_numpy(t)
            started = time.perf_counter()
            try:
                client.infer("model", inputs, outputs=wanted)
                step.record("ok", time.perf_counter() - started)
            except InferenceServerException as exc:
                seconds = time.perf_counter() - started
                if "Exceeds maximum queue size" in str(exc):
                    step.record("shed", seconds)
                    time.sleep(backoff_s * rng.uniform(0.5, 1.5))
                else:
                    step.record("error", seconds, f"{exc.status()}: {exc.message()[:60]}")
            except Exception as exc:  # noqa: BLE001  (connection errors of geventhttpclient)
                step.record("error", time.perf_counter() - started, type(exc).__name__)
    finally:
        client.close()


def triton_stats(url: str) -> tuple[int, float]:
    """(successful inferences, their summed compute_infer time in ms) so far."""
    with urllib.request.urlopen(f"{url}/v2/models/model/stats", timeout=30) as answer:
        stats = json.loads(answer.read())["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"]), int(stats["compute_infer"]["ns"]) / 1e6


def run_step(target, clients: int, duration_s: float, budget: int, triton_url: str | None = None) -> dict:
    step = Step()
    before = triton_stats(triton_url) if triton_url else None
    deadline = time.monotonic() + duration_s
    threads = [threading.Thread(target=target, args=(step, i, deadline, budget)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.asarray(step.accepted) * 1e3
    shed_ms = np.asarray(step.shed) * 1e3
    if before is not None:
        count, total = (b - a for a, b in zip(before, triton_stats(triton_url)))
        model_ms = total / count if count else None
    else:
        model_ms = float(np.mean(step.model_ms)) if step.model_ms else None
    return {
        "clients": clients,
        "wall_s": round(wall, 2),
        "accepted": len(step.accepted),
        "throughput_rps": round(len(step.accepted) / wall, 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 1) if ms.size else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 1) if ms.size else None,
        "max_ms": round(float(ms.max()), 1) if ms.size else None,
        "model_ms_mean": round(model_ms, 1) if model_ms is not None else None,
        # share of the step's wall time the (single) model worker spent in model calls: robust to the machine's
        # load, which slows the model calls and the wall time alike
        "model_busy_fraction": round(len(step.accepted) * model_ms / 1e3 / wall, 3) if model_ms is not None else None,
        "shed": len(step.shed),
        "shed_p50_ms": round(float(np.percentile(shed_ms, 50)), 1) if shed_ms.size else None,
        "shed_p99_ms": round(float(np.percentile(shed_ms, 99)), 1) if shed_ms.size else None,
        "shed_max_ms": round(float(shed_ms.max()), 1) if shed_ms.size else None,
        "errors": sum(step.errors.values()),
        "error_kinds": step.errors,
        "reconnects": step.reconnects,
        "retry_after_s_median": float(np.median(step.retry_after)) if step.retry_after else None,
    }


def summarize(rounds: list[dict], counts: list[int], max_queue: int):
    """Medians over rounds, Triton/avit throughput and model-busy ratios, and the targets at the most clients."""

    def median(name: str, clients: int, key: str):
        values = [row[key] for rows in rounds for row in rows[name] if row["clients"] == clients and row[key] is not None]
        return round(float(np.median(values)), 3) if values else None

    keys = ("throughput_rps", "model_busy_fraction", "p50_ms", "p99_ms", "model_ms_mean", "shed_max_ms")
    summary = {name: {str(c): {key: median(name, c, key) for key in keys} for c in counts} for name in ("avit serve", "triton")}
    checks = {}
    top = max(counts)
    for name in ("avit serve", "triton"):
        per_round = []
        for rows in (r[name] for r in rounds):
            lone = next((row["p50_ms"] for row in rows if row["clients"] == 1), None)
            full = next(row for row in rows if row["clients"] == top)
            bound = (max_queue + 1) * lone if lone else None
            per_round.append({
                "one_request_ms": lone, "p99_ms": full["p99_ms"], "bound_ms": round(bound, 1) if bound else None,
                "p99_within_bound": bool(bound and full["p99_ms"] is not None and full["p99_ms"] <= bound),
                "bound_from_model_time_in_step_ms": round((max_queue + 1) * full["model_ms_mean"], 1) if full["model_ms_mean"] else None,
                "shed": full["shed"], "shed_max_ms": full["shed_max_ms"], "errors": full["errors"],
            })
        checks[name] = {
            "connection_errors": sum(r["errors"] for r in per_round),
            "shed": sum(r["shed"] for r in per_round),
            "shed_max_ms": max((r["shed_max_ms"] for r in per_round if r["shed_max_ms"] is not None), default=None),
            "every_shed_under_100_ms": all(r["shed_max_ms"] is None or r["shed_max_ms"] < 100 for r in per_round),
            "p99_within_bound_every_round": all(r["p99_within_bound"] for r in per_round),
            "rounds": per_round,
        }
    ratio = {
        str(c): round(summary["triton"][str(c)]["throughput_rps"] / summary["avit serve"][str(c)]["throughput_rps"], 3)
        if summary["avit serve"][str(c)]["throughput_rps"] else None
        for c in counts
    }
    busy_ratio = {
        str(c): round(summary["triton"][str(c)]["model_busy_fraction"] / summary["avit serve"][str(c)]["model_busy_fraction"], 3)
        if summary["avit serve"][str(c)]["model_busy_fraction"] else None
        for c in counts
    }
    return summary, ratio, busy_ratio, checks


def wait_health(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"avit serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("avit serve did not come up") from None
            time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--clients", default="1,8,64", help="comma-separated client counts")
    parser.add_argument("--duration-s", type=float, default=30.0, help="time budget per (server, clients) step")
    parser.add_argument("--max-requests", type=int, default=3000, help="request budget per step (shed ones count)")
    parser.add_argument("--max-queue", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (both servers)")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians are reported)")
    parser.add_argument("--backoff-s", type=float, default=1.0, help="a shed client waits this long, for both servers")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving_load.json")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    if max(counts) > 64 or min(counts) < 1:
        raise SystemExit("clients must lie in 1..64")

    session = AdaptiveSession(args.model, intra_op_threads=args.threads, calibration=False)
    photos = find_photos("heldout")[: args.photos]
    if not photos:
        raise SystemExit("no held-out photos: pip install scikit-image")
    uploads, tensors = [], []
    for i, path in enumerate(photos):
        t = SETTINGS[i % len(SETTINGS)]
        body, ctype = multipart(path.read_bytes(), path.name)
        uploads.append((body, ctype, ",".join(str(v) for v in t)))
        tensors.append((session.preprocess(load_image(path))[None], np.asarray([t], np.float32)))
    for x, t in tensors[:2]:
        session.run(x, t[0])  # warm-up
    in_process = [session.run(x, t[0]).latency_ms for x, t in tensors[:4]]  # one call, in this process, no server

    tmp = Path(tempfile.mkdtemp(prefix="avit-load-"))
    repo = write_triton_repository(args.model, tmp / "repo", name="model", backend="python", max_batch=1, instances=1,
                                   intra_op_threads=args.threads, max_queue_delay_us=0, max_queue_size=args.max_queue,
                                   queue_timeout_s=120)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    serve_log = open(tmp / "serve.log", "w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "avit.cli", "serve", str(args.model), "--port", str(port), "--workers", "1",
         "--max-batch", "1", "--max-wait-ms", "0", "--threads", str(args.threads), "--max-queue", str(args.max_queue),
         "--timeout-s", "120", "--log-level", "warning"],
        stdout=serve_log, stderr=subprocess.STDOUT, env=env,
    )
    triton = TritonServer(repo.root, log=tmp / "triton.log")
    rounds: list[dict[str, list[dict]]] = []
    load_before = os.getloadavg()
    try:
        wait_health(f"http://127.0.0.1:{port}", serve)
        triton.start(timeout_s=300)
        targets = {
            "avit serve": (lambda step, i, deadline, budget: avit_client(port, uploads, step, i, deadline, budget, args.backoff_s), None),
            "triton": (lambda step, i, deadline, budget: triton_client(triton.http_address, tensors, step, i, deadline, budget, args.backoff_s),
                       triton.http_url),
        }
        for target, url in targets.values():  # warm-up: 2 requests each, not counted
            run_step(target, 1, 60, 2, url)
        for r in range(args.rounds):
            rounds.append({name: [] for name in targets})
            for clients in counts:
                for name, (target, url) in targets.items():
                    row = run_step(target, clients, args.duration_s, args.max_requests, url)
                    rounds[-1][name].append(row)
                    print(f"round {r + 1} {name:10s} {clients:3d} clients: {row['throughput_rps']:6.2f} req/s  p50 {row['p50_ms']} ms  "
                          f"p99 {row['p99_ms']} ms  model {row['model_ms_mean']} ms  shed {row['shed']} (p99 {row['shed_p99_ms']} ms, "
                          f"max {row['shed_max_ms']} ms)  errors {row['errors']}  reconnects {row['reconnects']}", flush=True)
    finally:
        triton.stop()
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
        serve_log.close()
    load_after = os.getloadavg()

    summary, ratio, busy_ratio, checks = summarize(rounds, counts, args.max_queue)
    report = {
        "model": args.model.name,
        "input_size": list(session.info.input_size),
        "settings": {
            "threads": args.threads, "max_queue": args.max_queue, "workers_or_instances": 1, "max_batch": 1,
            "rounds": args.rounds, "backoff_s_after_shed": args.backoff_s, "duration_s_per_step": args.duration_s, "max_requests_per_step": args.max_requests,
            "thresholds": [list(t) for t in SETTINGS], "photos": [p.name for p in photos],
            "protocols": {"avit serve": "HTTP multipart upload, JSON answer (mask=false)",
                          "triton": "HTTP (tritonclient.http, binary tensors), preprocessed float32 input, only tokens_kept "
                                    "requested back (no per-pixel data, as avit's mask=false)"},
        },
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": load_after,
                    "note": "2-core machine shared with other jobs; the clients run on the same machine"},
        "in_process_latency_ms": [round(v, 1) for v in in_process],
        "median_over_rounds": summary,
        "triton_over_avit_throughput": ratio,
        "triton_over_avit_model_busy_fraction": busy_ratio,
        "at_max_clients": checks,
        "rounds": rounds,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"median_over_rounds": summary, "triton_over_avit_throughput": ratio,
                      "triton_over_avit_model_busy_fraction": busy_ratio, "at_max_clients": checks}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
