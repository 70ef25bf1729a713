"""The SLO controller (avit.runtime.slo) on a fake clock: deterministic, no threads, no sockets; and the
micro-batcher under an SLO on a real tiny model (earliest deadline first, the setting each answer names)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from avit.data import load_image
from avit.errors import InputError
from avit.runtime.slo import ServiceTimes, Setting, SloController, Waiting, pareto_settings, settings_from_calibration

# best quality first: model ms per image and agreement, as a calibration front would give them
LADDER = [Setting((0.4, 0.4), 100.0, 1, 0.995, name="defaults"), Setting((0.5, 0.5), 70.0, 1, 0.95),
          Setting((0.6, 0.6), 50.0, 1, 0.90), Setting((0.7, 0.7), 30.0, 1, 0.80)]
SLO_MS = 400.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def controller(**options) -> tuple[SloController, FakeClock]:
    clock = FakeClock()
    return SloController(LADDER, SLO_MS, clock=clock, **options), clock


def best_feasible(queue_len: int, slack_ms: float = 0.0) -> int:
    """The answer computed by hand: the first setting whose back-to-back EDF schedule of ``queue_len``
    requests admitted now ends ``slack_ms`` before the SLO; else the fastest."""
    for i, s in enumerate(LADDER):
        if queue_len * s.per_image_ms <= SLO_MS - slack_ms:
            return i
    return len(LADDER) - 1


def test_rising_load_picks_faster_settings_and_falling_load_returns_to_the_defaults():
    c, clock = controller(reserve=0.0)
    chosen = []
    for n in range(1, 16):  # a queue that grows, all admitted at the same instant
        waiting = [Waiting(c.deadline(clock.now)) for _ in range(n)]
        choice = c.choose(waiting)
        assert choice.index == best_feasible(n), n
        chosen.append(choice.index)
    assert chosen == sorted(chosen) and chosen[0] == 0 and chosen[-1] == len(LADDER) - 1
    assert not c.choose([Waiting(c.deadline()) for _ in range(15)]).feasible  # 15 × 30 ms > 400 ms
    # the burst drains: with one request left the defaults serve again
    assert c.choose([Waiting(c.deadline())]).index == 0


def test_requests_that_already_waited_need_faster_settings():
    c, clock = controller(reserve=0.0)
    admitted = clock.now
    clock.now += 0.250  # 250 ms in the queue already: 150 ms left of the 400 ms SLO
    waiting = [Waiting(c.deadline(admitted)), Waiting(c.deadline(admitted))]
    choice = c.choose(waiting)
    left_ms = SLO_MS - 250.0
    expected = next(i for i, s in enumerate(LADDER) if 2 * s.per_image_ms <= left_ms)
    assert choice.index == expected and choice.feasible


def test_admission_sheds_only_when_the_fastest_setting_cannot_make_it():
    c, clock = controller()
    fastest = LADDER[-1].per_image_ms
    fits = int(SLO_MS // fastest)  # requests the fastest setting finishes within the SLO, back to back
    waiting: list[Waiting] = []
    for _ in range(fits):
        assert c.admit(waiting)
        waiting.append(Waiting(c.deadline()))
    assert not c.admit(waiting)  # one more would end at (fits + 1) × 30 ms > 400 ms
    assert c.retry_after_s(waiting) >= 1


def test_a_call_in_flight_counts_against_admission():
    c, clock = controller()
    fits = int(SLO_MS // LADDER[-1].per_image_ms)
    end = c.started(0, 1)  # the defaults run: 100 ms before a worker is free
    waiting = [Waiting(c.deadline()) for _ in range(fits - 4)]  # 100 ms = 3.3 fast calls
    assert c.admit(waiting)
    waiting += [Waiting(c.deadline())]
    assert not c.admit(waiting)
    c.finished(0, 1, 100.0, end)
    assert c.admit(waiting)


def test_the_running_estimate_corrects_the_calibration():
    c, clock = controller(reserve=0.0)
    three = [Waiting(c.deadline()) for _ in range(3)]
    assert c.choose(three).index == best_feasible(3)  # 3 × 100 ms fits 400 ms
    for _ in range(30):  # the machine runs 50 % slower than calibrated
        c.observe(0, 1, 150.0)
    assert c.per_image_ms(0) == pytest.approx(150.0, rel=0.02)
    # what was learnt at the defaults carries over to the settings not used lately (machine factor)
    assert c.per_image_ms(3) == pytest.approx(LADDER[3].per_image_ms * c.times.factor, rel=0.01)
    assert c.times.factor > 1.3
    assert c.choose(three).index > 0  # 3 × 150 ms no longer fits


def test_service_times_average_noise_out():
    times = ServiceTimes(LADDER)
    rng = np.random.default_rng(0)
    for _ in range(200):
        times.observe(1, 1, 70.0 * float(rng.uniform(0.9, 1.1)))
    assert times.per_image_ms(1) == pytest.approx(70.0, rel=0.05)
    assert 0.02 < times.spread < 0.1  # ±10 % uniform: σ of the log ≈ 0.058


def test_the_reserve_applies_only_under_load():
    c, clock = controller(reserve=0.5, calm=0.6, rate_window_s=10.0)
    three = [Waiting(c.deadline()) for _ in range(3)]  # 300 ms at the defaults: fits 400, not 400 − 200
    assert c.choose(three).index == 0  # no arrivals seen: calm, no reserve
    for _ in range(100):  # 10 requests per second for 10 s: 10/s × 100 ms = the defaults' whole capacity
        clock.now += 0.1
        c.admit([])
    assert c.utilisation() >= 1.0
    assert c.choose([Waiting(c.deadline()) for _ in range(3)]).index == best_feasible(3, slack_ms=0.5 * SLO_MS)
    clock.now += 60.0  # the arrivals stop: the window empties, the reserve goes
    c.admit([])
    assert c.choose([Waiting(c.deadline()) for _ in range(3)]).index == 0


def test_bad_settings_and_slos_are_one_line_errors():
    with pytest.raises(InputError, match="positive"):
        SloController(LADDER, 0)
    with pytest.raises(InputError, match="positive"):
        SloController(LADDER, "soon")
    with pytest.raises(InputError, match="best quality first"):
        SloController(LADDER[::-1], 100)
    with pytest.raises(InputError, match="reserve"):
        SloController(LADDER, 100, reserve=1.0)


def _calibration(points):
    from avit.metadata.calibration import Calibration

    def point(t, ms, q):
        return {"thresholds": list(t), "knobs": [0.0] * len(t), "quality": q, "tokens_kept": [10.0] * len(t),
                "remeasured": False, "pareto": False,
                "latency_ms": {"mean": ms, "p50": ms, "p90": ms, "p95": ms, "p99": ms, "n": 3}}

    pts = [point(*p) for p in points]
    return Calibration.from_dict({
        "format": "avit-calibration", "version": 1, "avit_version": "0", "created": "now",
        "model": {"file": "m.onnx", "sha256": "0" * 64, "size_bytes": 1, "policy": "entropy", "pause_points": [4, 8],
                  "num_patches": 16},
        "backend": {"name": "onnxruntime", "providers": []},
        "measurement": {"batch": 2, "percentile": 95, "images": ["a"], "repeats": 1, "final_rounds": 1, "metric": "pixel",
                        "reference": "x"},
        "target": {"latency_ms": 10, "percentile": 95, "batch": 2, "met": True},
        "search": {"evaluations": len(pts), "timed": len(pts), "seconds": 1, "exhausted": False},
        "points": pts, "chosen": {**pts[0], "meets_target": True}, "heldout": None, "presets": {},
    })


def test_settings_from_calibration_is_the_front_capped_at_the_defaults():
    # (thresholds, ms per call of 2 images, quality); (0.45, 0.45) is dominated by the defaults
    points = [((0.0, 0.0), 240.0, 1.0), ((0.3, 0.3), 200.0, 0.998), ((0.45, 0.45), 210.0, 0.99),
              ((0.5, 0.5), 150.0, 0.95), ((0.7, 0.7), 90.0, 0.7), ((0.6, 0.6), 100.0, 0.85)]
    calib = _calibration(points)
    settings = settings_from_calibration(calib, np.float32([0.3, 0.3]).tolist())
    front = sorted({(t, ms, q) for t, ms, q in points if not any(
        m2 <= ms and q2 >= q and (m2, q2) != (ms, q) for _, m2, q2 in points)}, key=lambda p: -p[2])
    expected = [p for p in front if p[2] <= 0.998]
    assert [s.thresholds for s in settings] == [p[0] for p in expected]
    assert settings[0].name == "defaults" and settings[0].per_image_ms == 100.0  # measured at batch 2
    whole = settings_from_calibration(calib, ceiling="front")
    assert [s.thresholds for s in whole] == [p[0] for p in front]
    assert pareto_settings(whole) == whole


# ---------------------------------------------------------------------- the batcher under an SLO, tiny model
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    from avit.calibration.calibrate import calibrate
    from tiny_onnx import photo_dir, tiny_onnx

    root = tmp_path_factory.mktemp("slo")
    model = Path(shutil.copy(tiny_onnx(tmp_path_factory), root / "tiny.onnx"))  # a folder of its own: the
    photos = sorted(photo_dir(root, n=4).iterdir())  # calibration beside it must not reach other tests' copy
    calibrate(model, 1e6, photos[:3], heldout=photos[3:], batch=1, output=root / "tiny.calib.json", plot=None,
              max_evals=6, repeats=1, final_rounds=1)
    return model, photos


class _Gate:
    """A real session whose calls wait for an event and record their thresholds (to observe the order)."""

    def __init__(self, session) -> None:
        self.session, self.gate, self.order = session, threading.Event(), []
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, images, thresholds=None):
        self.entered.set()
        self.gate.wait(30)
        self.order.append(images.copy())
        return self.session.run(images, thresholds)


def test_batcher_under_an_slo_serves_earliest_deadline_first_and_names_the_setting(calibrated):
    from avit.runtime import AdaptiveSession, MicroBatcher

    model, photos = calibrated
    session = AdaptiveSession(model)
    gated = _Gate(session)
    x = [session.preprocess(load_image(p)) for p in photos]
    with MicroBatcher(gated, max_batch=1, max_wait_ms=0, slo_ms=60_000) as batcher:
        first = batcher.submit(x[0])
        assert gated.entered.wait(30)  # the runner holds the first request; the next ones queue
        now = time.perf_counter()
        late = batcher.submit(x[1], admitted=now)  # admitted now: the latest deadline
        early = batcher.submit(x[2], admitted=now - 10.0)  # admitted 10 s ago: due first
        assert [w.deadline for w in batcher.waiting()] == sorted(w.deadline for w in batcher.waiting())[::-1]
        gated.gate.set()
        results = [f.result(30) for f in (first, late, early)]
    assert np.array_equal(gated.order[1], x[2][None]) and np.array_equal(gated.order[2], x[1][None])
    ladder = batcher.controller.settings
    for r in results:
        assert r.setting in [s.label for s in ladder]
        assert r.deadline is not None
        matching = [s for s in ladder if s.label == r.setting][0]
        np.testing.assert_allclose(r.thresholds, matching.thresholds, rtol=1e-6)
    # a long SLO and an idle queue: the top rung (the model's defaults) serves
    assert results[0].setting == ladder[0].label


def test_batcher_slo_needs_a_calibration_and_a_reachable_slo(calibrated, tmp_path):
    from avit.runtime import AdaptiveSession, MicroBatcher

    model, _ = calibrated
    bare = shutil.copy(model, tmp_path / "bare.onnx")
    with pytest.raises(InputError, match="avit calibrate"):
        MicroBatcher(AdaptiveSession(bare), slo_ms=100)
    with pytest.raises(InputError, match="below the fastest"):
        MicroBatcher(AdaptiveSession(model), slo_ms=1e-6)


# ---------------------------------------------------------------------- avit serve --slo-ms
def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def test_avit_serve_slo_answers_name_their_setting_and_metrics_count_them(calibrated, tmp_path):
    from test_service import AVIT, _error, _free_port, _get, _server, predict  # predict: the example's client

    model, photos = calibrated
    port = _free_port()
    cmd = [*AVIT, "serve", model, "--port", port, "--slo-ms", 60000, "--max-wait-ms", 0, "--log-level", "warning"]
    with _server(cmd, port, tmp_path / "slo.log") as (url, _):
        card = _get(f"{url}/model")
        ladder = card["slo"]["settings"]
        assert card["limits"]["slo_ms"] == 60000 and ladder[0]["name"] == "defaults"
        assert [s["quality"] for s in ladder] == sorted((s["quality"] for s in ladder), reverse=True)
        jobs = [p for p in photos for _ in range(3)]
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda p: predict(url, p, timeout=60, mask="false"), jobs))
        by_name = {s["name"]: s for s in ladder}
        for a in answers:
            assert a["slo"] == {"ms": 60000.0, "met": a["latency_ms"]["total"] <= 60000.0}
            assert a["slo"]["met"]  # a minute is plenty for a tiny model
            np.testing.assert_allclose(a["thresholds"], by_name[a["setting"]]["thresholds"], rtol=1e-6)
        fixed = predict(url, photos[0], thresholds="0,0", mask="false")  # a request's own knob is honoured
        assert fixed["thresholds"] == [0.0, 0.0] and fixed["setting"] is None and fixed["tokens_kept"] == [24, 24]
        code, detail = _error(lambda: predict(url, photos[0], thresholds="1"))
        assert code == 422 and "expected 2 pause thresholds" in detail
        m = _metrics(url)
        answered = len(answers) + 1
        assert m[("avit_request_latency_seconds_count", ())] == answered
        assert sum(v for (name, _), v in m.items() if name == "avit_answers_total") == answered
        assert m[("avit_answers_total", (("setting", "0,0"),))] == 1
        assert m[("avit_shed_total", (("reason", "slo"),))] == 0 and m[("avit_slo_misses_total", ())] == 0
        assert m[("avit_queue_length", ())] == 0
        for point in ("1", "3"):
            assert m[("avit_tokens_kept_ratio_count", (("pause_point", point),))] == answered
        # the histogram's bucket at the SLO holds every answer that met it
        assert m[("avit_request_latency_seconds_bucket", (("le", "60.0"),))] == answered


def test_avit_serve_slo_bad_input_is_one_line_and_nothing_listens(calibrated, tmp_path):
    from test_service import _free_port
    from test_cli import assert_one_line_error, avit

    model, _ = calibrated
    bare = shutil.copy(model, tmp_path / "bare.onnx")
    port = _free_port()
    cases = [
        ((model, "--slo-ms", "0"), "--slo-ms must be a positive number"),
        ((model, "--slo-ms", "-5"), "--slo-ms must be a positive number"),
        ((model, "--slo-ms", "soon"), "--slo-ms must be a number of milliseconds"),
        ((model, "--slo-ms", "inf"), "--slo-ms must be a positive number"),
        ((bare, "--slo-ms", "500"), "run 'avit calibrate"),
        ((model, "--slo-ms", "1e-9"), "below the fastest setting"),
    ]
    for args, message in cases:
        assert_one_line_error(avit("serve", *args, "--port", port), message)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:  # nothing was left listening
            assert probe.connect_ex(("127.0.0.1", port)) != 0


# ---------------------------------------------------------------------- Triton: avit triton-repo --slo-ms, live
def test_triton_repo_slo_serves_on_the_live_server_with_the_controllers_settings(calibrated, tmp_path):
    pytest.importorskip("pytriton", reason="pip install 'avit[dev]' (nvidia-pytriton bundles tritonserver)")
    http = pytest.importorskip("tritonclient.http", reason="pip install 'avit[dev]'")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from avit.serving.triton import TritonServer, write_triton_repository
    from avit.runtime import AdaptiveSession
    from avit.runtime.slo import settings_from_calibration
    from test_cli import assert_one_line_error, avit

    model, photos = calibrated
    repo = write_triton_repository(model, tmp_path / "repo", name="avit", backend="python", max_batch=4,
                                   intra_op_threads=1, slo_ms=30000, max_queue_delay_us=20000)
    config = text_format.Parse((repo.root / "avit" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert [o.name for o in config.output] == ["logits", "tokens_kept", "pause_thresholds_used"]
    assert config.parameters["AVIT_SLO_MS"].string_value == "30000"
    assert config.dynamic_batching.default_queue_policy.default_timeout_microseconds == 30_000_000
    assert (repo.root / "avit" / "1" / "model.calib.json").read_bytes() == model.with_name("tiny.calib.json").read_bytes()

    session = AdaptiveSession(model)
    ladder = [s.thresholds for s in settings_from_calibration(session.calibration, session.thresholds(None).tolist())]
    x = np.stack([session.preprocess(load_image(p)) for p in photos])
    server = TritonServer(repo.root, log=tmp_path / "server.log")
    server.start(timeout_s=120)
    try:
        client = http.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=60)
        inputs = [http.InferInput("images", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x)
        out = client.infer("avit", inputs)
        used = out.as_numpy("pause_thresholds_used")
        assert used.shape == (len(photos), 2)
        assert any(np.allclose(used[0], t, rtol=1e-6) for t in ladder)  # a setting of the controller's ladder
        expected = session.run(x, used[0])  # what it answered is what the session computes at that setting
        np.testing.assert_array_equal(out.as_numpy("tokens_kept"), expected.tokens_kept)
        np.testing.assert_allclose(out.as_numpy("logits"), expected.logits, atol=1e-4, rtol=0)
        own = np.tile(np.float32([0.0, 0.0]), (len(photos), 1))  # a request's own thresholds are honoured
        inputs.append(http.InferInput("pause_thresholds", list(own.shape), "FP32"))
        inputs[1].set_data_from_numpy(own)
        out = client.infer("avit", inputs)
        np.testing.assert_array_equal(out.as_numpy("pause_thresholds_used"), own)
        assert (out.as_numpy("tokens_kept") == 24).all()
        client.close()
    finally:
        server.stop()
    bare = shutil.copy(model, tmp_path / "bare.onnx")
    assert_one_line_error(avit("triton-repo", bare, "-o", tmp_path / "r1", "--backend", "python", "--slo-ms", "500"),
                          "needs bare.calib.json beside the model")
    assert_one_line_error(avit("triton-repo", model, "-o", tmp_path / "r2", "--backend", "onnxruntime", "--slo-ms", "500"),
                          "--slo-ms needs --backend python")
    assert_one_line_error(avit("triton-repo", model, "-o", tmp_path / "r3", "--backend", "python", "--slo-ms", "0"),
                          "--slo-ms must be a positive number")
    assert_one_line_error(avit("triton-repo", model, "-o", tmp_path / "r4", "--backend", "python", "--slo-ms", "1e-9"),
                          "below the fastest setting")
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3", "r4"))
