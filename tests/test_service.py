"""Serving: the micro-batcher, the HTTP service on 127.0.0.1 with real photos, `avit serve`.

Servers run as real subprocesses on a free loopback port; every request has a timeout and the request
counts are fixed.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avit.calibration.calibrate import calibrate
from avit.metadata.calibration import save_calibration
from avit.data import find_photos, load_image
from avit.errors import InputError
from avit.runtime import AdaptiveSession, MicroBatcher
from test_cli import AVIT, assert_one_line_error, avit
from tiny_onnx import tiny_onnx

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "python_service"
sys.path.insert(0, str(EXAMPLE))
from client import predict  # noqa: E402  (the example's own client)

PRESETS = {"fast": ([0.6, 0.6], 10.0, 0.90), "balanced": ([0.3, 0.3], 20.0, 0.95), "accurate": ([0.1, 0.1], 40.0, 0.99)}


@pytest.fixture(scope="module")
def photos() -> list[Path]:
    found = find_photos("heldout")[:8]
    if len(found) < 4:
        pytest.skip("needs 4 held-out photos: pip install scikit-image")
    return found


@pytest.fixture(scope="module")
def model(tmp_path_factory, photos) -> Path:
    """The shared tiny model copied into a folder of its own, with a calibration beside it whose presets
    have known latencies (so a budget picks a known preset)."""
    folder = tmp_path_factory.mktemp("serve")
    path = shutil.copy(tiny_onnx(tmp_path_factory), folder / "tiny.onnx")
    report = calibrate(path, 1e6, photos[:2], heldout=photos[2:3], batch=1, output=folder / "probe.calib.json",
                       plot=None, max_evals=4, repeats=0, final_rounds=1)
    data = json.loads(report.path.read_text())
    data["presets"] = {
        name: {"thresholds": t, "latency_ms": ms, "percentile": 95.0, "batch": 1, "quality": q, "tokens_kept": [24, 24]}
        for name, (t, ms, q) in PRESETS.items()
    }
    save_calibration(folder / "tiny.calib.json", data)
    return Path(path)


@pytest.fixture(scope="module")
def session(model) -> AdaptiveSession:
    return AdaptiveSession(model)


def _inputs(session, photos):
    return [session.preprocess(load_image(p)) for p in photos]


# ---------------------------------------------------------------------------------------------- batcher
def test_batcher_threads_with_different_thresholds_match_serial_calls(session, photos):
    """8 threads, each with its own thresholds: the same tokens and logits as serial calls; no call mixes thresholds."""
    xs = _inputs(session, photos)
    settings = [[t, t + 0.1] for t in np.linspace(0.0, 0.9, 8)]
    jobs = [(xs[i % len(xs)], settings[i % 8]) for i in range(32)]
    serial = [session.run(x[None], t) for x, t in jobs]
    with MicroBatcher(session, max_batch=8, max_wait_ms=5, workers=2) as batcher:
        with ThreadPoolExecutor(max_workers=8) as pool:
            batched = list(pool.map(lambda job: batcher.run(job[0], job[1], timeout=30), jobs))
        stats = batcher.stats
    assert stats.requests == 32 and stats.images == 32
    for (_x, t), a, b in zip(jobs, serial, batched):
        np.testing.assert_array_equal(a.tokens_kept, b.tokens_kept)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5, rtol=1e-5)
        assert b.thresholds.tolist() == pytest.approx(t)
        assert b.logits.shape == (1, 3, 64, 96) and b.batch_size >= 1
    assert len({tuple(r.tokens_kept[0]) for r in serial}) > 4, "the thresholds should change the token counts"


#: A wait no test reaches: calls start when a group is full (an event), never because a window closed.
NEVER_MS = 120_000


def test_batcher_groups_requests_with_the_same_thresholds(session, photos):
    """Requests from as many threads as the batch holds: one call, started by the last arrival (no window)."""
    xs = _inputs(session, photos)[:8]
    serial = [session.run(x[None], [0.3, 0.4]) for x in xs]
    with MicroBatcher(session, max_batch=len(xs), max_wait_ms=NEVER_MS) as batcher:
        barrier = threading.Barrier(len(xs))

        def one(x):
            barrier.wait(timeout=30)
            return batcher.run(x, [0.3, 0.4], timeout=60)

        with ThreadPoolExecutor(max_workers=len(xs)) as pool:
            results = list(pool.map(one, xs))
    stats = batcher.stats
    assert (stats.calls, stats.requests, stats.images) == (1, len(xs), len(xs)), stats
    assert [(r.batch_size, r.requests_in_batch) for r in results] == [(len(xs), len(xs))] * len(xs)
    for a, b in zip(serial, results):
        np.testing.assert_array_equal(a.tokens_kept, b.tokens_kept)
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def test_batcher_never_mixes_thresholds_in_one_call(session, photos):
    """Interleaved requests A, B, A, B, …: one call per thresholds setting, in arrival order, results split back.

    A call starts when its setting has a full batch (half the requests): the last A starts A's call while
    a B waits, whatever the machine's speed."""
    xs = _inputs(session, photos)[:6]
    xs = xs[: len(xs) - len(xs) % 2]  # an even count: half the requests per setting
    n = len(xs)
    settings = [[0.0, 0.0], [0.6, 0.6]]
    with MicroBatcher(session, max_batch=n // 2, max_wait_ms=NEVER_MS) as batcher:
        futures = [batcher.submit(x, settings[i % 2]) for i, x in enumerate(xs)]
        results = [f.result(timeout=60) for f in futures]
    stats = batcher.stats
    assert (stats.calls, stats.requests, stats.images) == (2, n, n)
    for i, (x, r) in enumerate(zip(xs, results)):
        assert (r.batch_size, r.requests_in_batch) == (n // 2, n // 2)
        assert r.thresholds.tolist() == pytest.approx(settings[i % 2])
        expected = session.run(x[None], settings[i % 2])
        np.testing.assert_array_equal(r.tokens_kept, expected.tokens_kept)
        np.testing.assert_allclose(r.logits, expected.logits, atol=1e-5, rtol=1e-5)
    assert all(r.tokens_kept.tolist() == [[24, 24]] for r in results[::2])


def test_batcher_rejects_a_bad_request_alone(session, photos):
    x = _inputs(session, photos[:1])[0]
    with MicroBatcher(session, max_batch=4, max_wait_ms=1) as batcher:
        with pytest.raises(InputError, match="expected 2 pause thresholds"):
            batcher.submit(x, [0.1])
        with pytest.raises(InputError, match="images must be float32"):
            batcher.submit(x[:, :10])
        with pytest.raises(InputError, match="only one of"):
            batcher.submit(x, [0.1, 0.1], preset="fast")
        assert batcher.run(x, timeout=30).tokens_kept.shape == (1, 2)  # still serving
        res = batcher.run(x, latency_budget_ms=25, timeout=30)
        assert (res.preset, res.within_budget) == ("balanced", True)
    with pytest.raises(InputError, match="closed"):
        batcher.submit(x)
    with pytest.raises(InputError, match="max_batch"):
        MicroBatcher(session, max_batch=0)


def test_batcher_never_runs_a_cancelled_request(session, photos):
    """A request whose caller gave up (future cancelled while it waits) takes no place in the call: with
    room for 3, requests 0, 1 (cancelled), 2, 3 make one call of 0, 2 and 3, started by the last arrival
    (were 1 counted, 0, 1 and 2 would fill the call and 0 and 2 run without 3)."""
    xs = _inputs(session, photos)[:4]
    with MicroBatcher(session, max_batch=3, max_wait_ms=NEVER_MS) as batcher:
        futures = [batcher.submit(x, [0.3, 0.4]) for x in xs[:2]]
        assert futures[1].cancel()
        futures += [batcher.submit(x, [0.3, 0.4]) for x in xs[2:]]
        results = [futures[i].result(timeout=60) for i in (0, 2, 3)]
    stats = batcher.stats  # after close: the cancelled request has left the queue
    assert futures[1].cancelled() and (stats.calls, stats.images, stats.cancelled) == (1, 3, 1)
    assert [(r.batch_size, r.requests_in_batch) for r in results] == [(3, 3)] * 3
    for x, r in zip((xs[0], xs[2], xs[3]), results):
        expected = session.run(x[None], [0.3, 0.4])
        np.testing.assert_array_equal(r.tokens_kept, expected.tokens_kept)
        np.testing.assert_allclose(r.logits, expected.logits, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- HTTP
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(cmd: list[str], port: int, log: Path, timeout: float = 60.0):
    """Start ``cmd`` (listening on 127.0.0.1:``port``), wait for /health, yield the URL, stop it with SIGINT."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen([*map(str, cmd)], stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited with {proc.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    assert json.loads(r.read())["status"] == "ok"
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"server did not answer /health within {timeout} s:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _error(call) -> tuple[int, str]:
    with pytest.raises(urllib.error.HTTPError) as info:
        call()
    return info.value.code, json.loads(info.value.read())["detail"]


def test_example_service_answers_concurrent_real_photos_with_the_knob(model, session, photos, tmp_path):
    port = _free_port()
    cmd = [sys.executable, EXAMPLE / "app.py", model, "--port", port, "--max-wait-ms", 20, "--max-batch", 8]
    with _server(cmd, port, tmp_path / "server.log") as (url, _):
        card = _get(f"{url}/model")
        assert card["pause_points"] == [1, 3] and card["input_size"] == [64, 96] and card["num_patches"] == 24
        assert card["default_thresholds"] == [0.5, 0.6] and card["everything_paused"] == "inf"
        assert set(card["presets"]) == set(PRESETS) and card["batching"]["max_batch"] == 8

        jobs = [(p, t) for t in ("0,0", "0.6,0.6") for p in photos]  # 16 requests, 8 at a time
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda job: predict(url, job[0], timeout=30, thresholds=job[1]), jobs))
        by = {(p, t): a for (p, t), a in zip(jobs, answers)}
        for p in photos:
            full, paused = by[(p, "0,0")], by[(p, "0.6,0.6")]
            assert full["tokens_kept"] == [24, 24] and full["thresholds"] == [0.0, 0.0]
            assert paused["thresholds"] == [0.6, 0.6]
            assert all(a <= b for a, b in zip(paused["tokens_kept"], full["tokens_kept"]))
            # the same answer as the session in this process (the server preprocesses the upload itself)
            expected = session.run(session.preprocess(load_image(p))[None], [0.6, 0.6])
            assert paused["tokens_kept"] == expected.tokens_kept[0].tolist()
            mask = Image.open(io.BytesIO(base64.b64decode(full["mask_png_base64"])))
            with Image.open(p) as im:
                assert mask.size == im.size == tuple(full["image_size"])
            assert sum(full["class_fractions"].values()) == pytest.approx(1.0)
            assert full["latency_ms"]["model"] > 0 and full["latency_ms"]["total"] >= full["latency_ms"]["model"]
        assert sum(sum(by[(p, "0.6,0.6")]["tokens_kept"]) for p in photos) < 48 * len(photos) // 2
        assert max(a["batch_size"] for a in answers) > 1, "concurrent requests with the same thresholds should share calls"

        photo = photos[0]
        fast = predict(url, photo, preset="fast", mask="false")
        assert fast["preset"] == "fast" and fast["thresholds"] == [0.6, 0.6] and "mask_png_base64" not in fast
        budget = predict(url, photo, latency_budget_ms=25, mask="false")
        assert (budget["preset"], budget["within_budget"], budget["thresholds"]) == ("balanced", True, [0.3, 0.3])
        assert predict(url, photo, latency_budget_ms=1, mask="false")["within_budget"] is False
        assert predict(url, photo, mask="false")["thresholds"] == [0.5, 0.6]  # the model's defaults

        assert _error(lambda: predict(url, photo, thresholds="1")) == (422, "expected 2 pause thresholds (one per pause point [1, 3]), got 1")
        code, detail = _error(lambda: predict(url, photo, thresholds="a,b"))
        assert code == 422 and "not a comma-separated list" in detail
        code, detail = _error(lambda: predict(url, photo, preset="nope"))
        assert code == 422 and detail.startswith("unknown preset 'nope'")
        code, detail = _error(lambda: predict(url, photo, preset="fast", thresholds="0,0"))
        assert code == 422 and "only one of" in detail
        text = tmp_path / "notes.txt"
        text.write_text("not an image")
        code, detail = _error(lambda: predict(url, text))
        assert code == 422 and detail.startswith("cannot decode notes.txt as an image") and " at 0x" not in detail and "<" not in detail
        assert _get(f"{url}/health")["status"] == "ok"  # bad requests did not hurt the server


def test_avit_serve_cli(tmp_path_factory, photos, tmp_path):
    model = tiny_onnx(tmp_path_factory)
    port = _free_port()
    cmd = [*AVIT, "serve", model, "--port", port, "--max-batch", 4, "--max-wait-ms", 0, "--log-level", "warning"]
    with _server(cmd, port, tmp_path / "cli.log") as (url, proc):
        answer = predict(url, photos[0], thresholds="0,inf", mask="false")
        assert answer["tokens_kept"] == [24, 0] and answer["thresholds"] == [0.0, "inf"]
        assert _get(f"{url}/model")["presets"] == {}
        code, detail = _error(lambda: predict(url, photos[0], preset="fast"))
        assert code == 422 and "no presets for tiny.onnx" in detail
    assert proc.returncode == 0, (tmp_path / "cli.log").read_text()
    assert "serving" in (tmp_path / "cli.log").read_text()
    assert_one_line_error(avit("serve", tmp_path / "missing.onnx", "--port", _free_port()), "model not found")
    assert_one_line_error(avit("serve", model, "--log-level", "loud"), "--log-level must be one of")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        assert_one_line_error(avit("serve", model, "--port", busy.getsockname()[1]), "cannot listen on 127.0.0.1:")


def test_triton_repo_fixed_models_from_calibration_presets(model, tmp_path):
    """`avit triton-repo --preset`: the preset's thresholds baked into a dynamically batched model."""
    from avit.serving.triton import write_triton_repository

    repo = write_triton_repository(model, tmp_path / "repo", presets=["fast", "accurate"])
    assert [m.name for m in repo.models] == ["tiny", "tiny_fast", "tiny_accurate"]
    assert [m.fixed_thresholds for m in repo.models] == [None, (0.6, 0.6), (0.1, 0.1)]
    text = (tmp_path / "repo" / "tiny_fast" / "config.pbtxt").read_text()
    assert "max_batch_size: 8" in text and "dynamic_batching" in text and "pause_thresholds" not in text.split("input [")[1].split("output [")[0]
    with pytest.raises(InputError, match="unknown preset 'nope'; known: accurate, balanced, fast"):
        write_triton_repository(model, tmp_path / "r2", presets=["nope"])



# ---------------------------------------------------------------------------------------------- back-pressure
def _multipart(data: bytes, name: str = "photo.png") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _post(port: int, data: bytes, *, chunked: bool = False) -> tuple[int, dict, dict]:
    """POST ``data`` as the upload (whole body first, then the answer, as simple clients do)."""
    body, ctype = _multipart(data)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        if chunked:
            pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
            conn.request("POST", "/predict?mask=false", body=iter(pieces), headers={"Content-Type": ctype}, encode_chunked=True)
        else:
            conn.request("POST", "/predict?mask=false", body=body, headers={"Content-Type": ctype})
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), json.loads(answer.read())
    finally:
        conn.close()


def _wait_until(url: str, predicate, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        health = _get(f"{url}/health")
        if predicate(health):
            return health
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def test_avit_serve_sheds_beyond_the_queue_limits_uploads_and_shuts_down_gracefully(tmp_path_factory, photos, tmp_path):
    """--max-queue 1 with 1 worker: two requests in progress (held 1.5 s by the batcher's wait), a third is
    answered 503 + Retry-After while they still wait; uploads over --max-upload-mb: 413 (from Content-Length
    without sending a body, a chunked body, a whole body); SIGINT answers the requests in progress, exit 0."""
    model = tiny_onnx(tmp_path_factory)
    data = photos[0].read_bytes()
    limit_mb = (len(data) + 4096) / 1e6  # the photo fits; three copies do not
    port = _free_port()
    cmd = [*AVIT, "serve", model, "--port", port, "--max-batch", 64, "--max-wait-ms", 1500, "--max-queue", 1,
           "--timeout-s", 60, "--max-upload-mb", limit_mb, "--log-level", "warning"]
    with _server(cmd, port, tmp_path / "serve.log") as (url, proc):
        with ThreadPoolExecutor(max_workers=2) as pool:
            held = [pool.submit(_post, port, data) for _ in range(2)]
            _wait_until(url, lambda h: h["requests"]["active"] == 2)
            status, headers, body = _post(port, data)
            assert not any(f.done() for f in held), "the shed request must be answered while the others wait"
            assert status == 503 and int(headers["retry-after"]) >= 1
            assert body["detail"] == f"the server is busy (2 requests in progress); retry after {headers['retry-after']} s"
            answers = [f.result(timeout=60) for f in held]
        assert [a[0] for a in answers] == [200, 200] and [a[2]["requests_in_batch"] for a in answers] == [2, 2]

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # declared too large: answered, no body sent
        conn.putrequest("POST", "/predict")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(50_000_000))
        conn.endheaders()
        answer = conn.getresponse()
        assert answer.status == 413 and json.loads(answer.read())["detail"].startswith("upload of 50000000 bytes is larger than the limit")
        conn.close()
        status, _, body = _post(port, data * 3, chunked=True)  # no Content-Length: counted while it streams
        assert status == 413 and body["detail"].startswith("upload is larger than the limit")
        status, _, body = _post(port, data * 3)  # a client that sends everything before reading still gets the answer
        assert status == 413
        status, _, body = _post(port, b"\x89PNG\r\n" + b"0" * 100)
        assert status == 422 and "0x" not in body["detail"] and body["detail"].startswith("cannot decode photo.png as an image")
        health = _get(f"{url}/health")
        assert (health["requests"]["shed"], health["requests"]["active"], health["requests"]["limit"]) == (1, 0, 2)

        with ThreadPoolExecutor(max_workers=2) as pool:  # graceful shutdown: what is admitted gets its answer
            held = [pool.submit(_post, port, data) for _ in range(2)]
            _wait_until(url, lambda h: h["requests"]["active"] == 2)
            proc.send_signal(signal.SIGINT)
            answers = [f.result(timeout=60) for f in held]
        assert [a[0] for a in answers] == [200, 200]
        assert proc.wait(timeout=30) == 0, (tmp_path / "serve.log").read_text()


def test_avit_serve_answers_504_and_drops_the_request_after_its_timeout(tmp_path_factory, photos, tmp_path):
    model = tiny_onnx(tmp_path_factory)
    port = _free_port()
    cmd = [*AVIT, "serve", model, "--port", port, "--max-wait-ms", 2000, "--timeout-s", 0.3, "--log-level", "warning"]
    with _server(cmd, port, tmp_path / "serve.log") as (url, _):
        status, _, body = _post(port, photos[0].read_bytes())
        assert status == 504 and body["detail"].startswith("no answer within 0.3 s")
        health = _wait_until(url, lambda h: h["batcher"]["cancelled"] == 1)
        assert health["batcher"]["calls"] == 0 and health["requests"]["timed_out"] == 1  # it never ran


def test_one_channel_answer_names_the_salient_fraction(tmp_path, photos):
    """A one-channel (sigmoid) model's mask is the positive class: its fraction is named by the last class name
    ("salient"), not the first ("background"), and equals the fraction of pixels above 0.5."""
    from avit.exporter import export_onnx
    from avit.runtime import probabilities
    from avit.serving import Predictor
    from conftest import tiny_model

    path = tmp_path / "one.onnx"
    export_onnx(tiny_model(num_classes=1, class_names=("background", "salient")), path, check=False)
    predictor = Predictor(path, max_wait_ms=0)
    try:
        answer = predictor.predict(photos[0].read_bytes(), mask=False)
        session = predictor.session
        probs = probabilities(session.run(session.preprocess(load_image(photos[0]))[None]).logits, session.info.output_activation)
        assert list(answer["class_fractions"]) == ["salient"]
        assert answer["class_fractions"]["salient"] == pytest.approx(float((probs[0, 0] > 0.5).mean()))
    finally:
        predictor.close()
