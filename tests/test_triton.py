"""Triton: `avit triton-repo` configs parsed with Triton's own schema, the model copies run like the original;
a live Triton Inference Server (the tritonserver of PyPI nvidia-pytriton) serving the python-backend repository
on 127.0.0.1 with real photos over HTTP and gRPC, concurrent, different thresholds per request, compared with
AdaptiveSession; malformed requests; a clean stop; `avit triton-serve`."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from avit.data import find_photos, load_image
from avit.errors import ArtifactError, InputError
from avit.runtime import AdaptiveSession
from avit.serving.triton import TritonModelSpec, TritonServer, config_pbtxt, write_triton_repository
from avit.serving.triton.server import find_bundled_triton, free_port
from avit._io import file_sha256
from avit.runtime.tensorrt import EngineSidecar, write_sidecar
from test_cli import AVIT, assert_one_line_error, avit
from tiny_onnx import tiny_onnx

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'avit[triton]'")
MC = model_config_pb2.ModelConfig
TYPE_FP32, TYPE_INT64 = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64
http = pytest.importorskip("tritonclient.http", reason="pip install 'avit[dev]'")
grpc = pytest.importorskip("tritonclient.grpc", reason="pip install 'avit[dev]'")
from tritonclient.utils import InferenceServerException  # noqa: E402


def needs_tritonserver() -> None:
    """Skip unless nvidia-pytriton (which bundles tritonserver) is installed."""
    pytest.importorskip("pytriton", reason="pip install 'avit[dev]' (nvidia-pytriton bundles tritonserver)")


def parse(path) -> model_config_pb2.ModelConfig:
    """Strict parse: an unknown field or a type error fails."""
    return text_format.Parse(path.read_text(), MC())


def io(entries) -> dict:
    return {e.name: (e.data_type, list(e.dims), e.optional if hasattr(e, "optional") else None) for e in entries}


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return tiny_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def repo(onnx_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("triton") / "repo"
    return write_triton_repository(
        onnx_path, out, name="avit", backend="onnxruntime", max_batch=4, instances=2, device="cpu", fixed={"fast": [0.6, 0.6]},
        max_queue_delay_us=800, intra_op_threads=1,
    )


def test_per_request_model_config(repo):
    folder = repo.root / "avit"
    cfg = parse(folder / "config.pbtxt")
    assert (cfg.name, cfg.platform, cfg.backend, cfg.default_model_filename) == ("avit", "onnxruntime_onnx", "onnxruntime", "model.onnx")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")  # thresholds are shared by a batch
    assert io(cfg.input) == {
        "images": (TYPE_FP32, [-1, 3, 64, 96], False),
        "pause_thresholds": (TYPE_FP32, [2], True),
    }
    assert {o.name: (o.data_type, list(o.dims)) for o in cfg.output} == {
        "logits": (TYPE_FP32, [-1, 3, 64, 96]),
        "tokens_kept": (TYPE_INT64, [-1, 2]),
    }
    [group] = cfg.instance_group
    assert (group.count, group.kind) == (2, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    assert cfg.parameters["intra_op_thread_count"].string_value == "1"
    assert (folder / "1" / "model.onnx").is_file()


def test_fixed_threshold_model_config_batches_dynamically(repo):
    folder = repo.root / "avit_fast"
    cfg = parse(folder / "config.pbtxt")
    assert (cfg.name, cfg.max_batch_size, cfg.platform) == ("avit_fast", 4, "onnxruntime_onnx")
    assert io(cfg.input) == {"images": (TYPE_FP32, [3, 64, 96], False)}  # batch dimension implicit
    assert {o.name: list(o.dims) for o in cfg.output} == {"logits": [3, 64, 96], "tokens_kept": [2]}
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 800
    assert (folder / "1" / "model.onnx").is_file()
    assert [m.name for m in repo.models] == ["avit", "avit_fast"]
    readme = repo.readme.read_text()
    assert f"tritonserver --model-repository={repo.root.resolve()}" in readme and "perf_analyzer -m avit_fast" in readme


def test_repository_models_compute_what_the_original_does(repo, onnx_path):
    """The per-request copy: thresholds optional (defaults) or fed; the fixed copy: images only."""
    original = ort.InferenceSession(str(onnx_path))
    per_request = ort.InferenceSession(str(repo.root / "avit" / "1" / "model.onnx"))
    fast = ort.InferenceSession(str(repo.root / "avit_fast" / "1" / "model.onnx"))
    assert [i.name for i in per_request.get_inputs()] == ["images"]
    assert [i.name for i in per_request.get_overridable_initializers()] == ["pause_thresholds"]
    assert [i.name for i in fast.get_inputs()] == ["images"] and not fast.get_overridable_initializers()
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 96)).astype(np.float32)

    def ref(t):
        return original.run(None, {"images": x, "pause_thresholds": np.asarray(t, np.float32)})

    for t in ([0.0, 0.0], [0.3, 0.4], [0.6, 0.6]):
        got = per_request.run(None, {"images": x, "pause_thresholds": np.asarray(t, np.float32)})
        for a, b in zip(ref(t), got):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(ref([0.5, 0.6]), per_request.run(None, {"images": x})):  # omitted: the model's defaults
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ref([0.6, 0.6]), fast.run(None, {"images": x})):
        np.testing.assert_array_equal(a, b)
    assert ref([0.0, 0.0])[1].tolist() == [[24, 24]] * 3 and ref([0.6, 0.6])[1].sum() < 3 * 48


def test_static_model_config_batches():
    spec = TritonModelSpec("static", "onnxruntime", (3, 448, 448), 1, 0, "none", max_batch=16, kind="KIND_GPU")
    cfg = text_format.Parse(config_pbtxt(spec), MC())
    assert cfg.max_batch_size == 16 and [i.name for i in cfg.input] == ["images"] and cfg.HasField("dynamic_batching")
    assert {o.name: list(o.dims) for o in cfg.output} == {"logits": [1, 448, 448], "tokens_kept": [0]}


def _engine(onnx_path, folder, plugin):
    """A stand-in engine file with a real sidecar (the repository writer only copies the engine)."""
    import onnx

    engine = folder / "tiny.engine"
    engine.write_bytes(b"serialized engine")
    proto = onnx.load(str(onnx_path))
    write_sidecar(engine, EngineSidecar(
        engine_sha256=file_sha256(engine), tensorrt_version="10.14.1", precision="fp32",
        profile={"images": {"min": [1, 3, 64, 96], "opt": [2, 3, 64, 96], "max": [4, 3, 64, 96]}},
        plugin_library=str(plugin), plugin_sha256="0" * 64, plugin_loader="static", onnx_path=str(onnx_path),
        onnx_sha256=file_sha256(onnx_path), metadata={p.key: p.value for p in proto.metadata_props},
        pause_points=[1, 3], default_thresholds=[0.5, 0.6],
    ))
    return engine


def test_engine_repository_loads_the_plugin_library_through_the_backend_config(onnx_path, tmp_path):
    plugin = tmp_path / "libavit_plugins.so"
    plugin.write_bytes(b"\x7fELF stand-in")
    engine = _engine(onnx_path, tmp_path, plugin)
    repo = write_triton_repository(engine, tmp_path / "repo", instances=1)
    cfg = parse(repo.root / "tiny" / "config.pbtxt")
    assert (cfg.platform, cfg.backend, cfg.default_model_filename, cfg.max_batch_size) == ("tensorrt_plan", "tensorrt", "model.plan", 0)
    assert io(cfg.input) == {"images": (TYPE_FP32, [-1, 3, 64, 96], False), "pause_thresholds": (TYPE_FP32, [2], False)}
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (repo.root / "tiny" / "1" / "model.plan").read_bytes() == b"serialized engine"
    readme = repo.readme.read_text()
    assert f'--backend-config=tensorrt,plugins="{plugin.resolve()}"' in readme and "TensorRT 10.14.1" in readme
    assert "batches of 1 to 4 images" in readme
    with pytest.raises(InputError, match="fixed thresholds need an ONNX model"):
        write_triton_repository(engine, tmp_path / "r2", fixed={"fast": [0.6, 0.6]})
    with pytest.raises(InputError, match="engines run on a GPU"):
        write_triton_repository(engine, tmp_path / "r3", device="cpu")
    (tmp_path / "tiny.engine.json").unlink()
    with pytest.raises(ArtifactError, match="has no sidecar"):
        write_triton_repository(engine, tmp_path / "r4")


def test_api_errors(onnx_path, tmp_path):
    with pytest.raises(InputError, match="must be 2 values"):
        write_triton_repository(onnx_path, tmp_path / "r", fixed={"x": [0.1]})
    with pytest.raises(InputError, match="model name"):
        write_triton_repository(onnx_path, tmp_path / "r", name="a b")
    with pytest.raises(ArtifactError, match="--preset needs tiny.calib.json"):
        write_triton_repository(onnx_path, tmp_path / "r", presets=["fast"])
    assert not (tmp_path / "r").exists()


def test_cli(onnx_path, tmp_path):
    out = tmp_path / "repo"
    proc = avit("triton-repo", onnx_path, "-o", out, "--fixed", "fast=0.6,0.6", "--max-batch", "8", "--backend", "onnxruntime")
    assert proc.returncode == 0, proc.stderr
    assert "tiny_fast" in proc.stdout and f"tritonserver --model-repository={out.resolve()}" in proc.stdout
    # the default for an .onnx is the python backend, which the server of `avit triton-serve` runs
    python = avit("triton-repo", onnx_path, "-o", tmp_path / "py")
    assert python.returncode == 0 and f"avit triton-serve {tmp_path / 'py'}" in python.stdout, python.stdout
    assert parse(tmp_path / "py" / "tiny" / "config.pbtxt").backend == "python"
    assert parse(out / "tiny_fast" / "config.pbtxt").max_batch_size == 8
    assert_one_line_error(avit("triton-repo", onnx_path, "-o", out), "already holds tiny (use --overwrite to replace)")
    assert avit("triton-repo", onnx_path, "-o", out, "--overwrite").returncode == 0
    assert_one_line_error(avit("triton-repo", onnx_path, "-o", tmp_path / "x", "--fixed", "0.6,0.6"), "must look like NAME=0.2,0.4")
    assert_one_line_error(avit("triton-repo", tmp_path / "missing.onnx", "-o", tmp_path / "x"), "model not found")
    assert_one_line_error(avit("triton-repo", onnx_path, "-o", tmp_path / "x", "--device", "tpu"), "(--instance-kind) must be one of auto, cpu, gpu")
    assert_one_line_error(avit("triton-repo", onnx_path, "-o", tmp_path / "x", "--instance-kind", "tpu"), "(--instance-kind) must be one of auto, cpu, gpu")

# ---------------------------------------------------------------------------------------------- python backend configs
def test_python_backend_config_batches_requests_with_their_own_thresholds(onnx_path, tmp_path):
    repo = write_triton_repository(
        onnx_path, tmp_path / "repo", name="avit", backend="python", max_batch=4, instances=2, device="cpu",
        fixed={"fast": [0.6, 0.6]}, max_queue_delay_us=300, max_queue_size=8, queue_timeout_s=2.5, intra_op_threads=1,
    )
    cfg = parse(repo.root / "avit" / "config.pbtxt")
    assert (cfg.name, cfg.backend, cfg.platform, cfg.max_batch_size) == ("avit", "python", "", 4)
    assert io(cfg.input) == {"images": (TYPE_FP32, [3, 64, 96], False), "pause_thresholds": (TYPE_FP32, [2], True)}
    assert {o.name: (o.data_type, list(o.dims)) for o in cfg.output} == {"logits": (TYPE_FP32, [3, 64, 96]), "tokens_kept": (TYPE_INT64, [2])}
    batcher = cfg.dynamic_batching
    assert batcher.max_queue_delay_microseconds == 300
    policy = batcher.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds, policy.allow_timeout_override) == (8, 2_500_000, True)
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {
        "AVIT_MODEL": "model.onnx", "AVIT_BACKEND": "onnxruntime", "AVIT_INTRA_OP_THREADS": "1",
    }
    assert (cfg.instance_group[0].count, cfg.instance_group[0].kind) == (2, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    version = repo.root / "avit" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx", "model.py"]
    assert (version / "model.onnx").read_bytes() == onnx_path.read_bytes()  # the file itself: AdaptiveSession opens it
    fast = parse(repo.root / "avit_fast" / "config.pbtxt")
    assert [i.name for i in fast.input] == ["images"] and fast.parameters["AVIT_THRESHOLDS"].string_value == "0.6,0.6"
    readme = repo.readme.read_text()
    assert f"avit triton-serve {repo.root.resolve()}" in readme and "one row per image" in readme


def test_python_backend_api_errors(onnx_path, tmp_path):
    with pytest.raises(InputError, match="served by backend onnxruntime or python, not tensorrt"):
        write_triton_repository(onnx_path, tmp_path / "r", backend="tensorrt")
    with pytest.raises(InputError, match="applies to the python backend only"):
        write_triton_repository(onnx_path, tmp_path / "r", backend="onnxruntime", runtime="openvino")
    with pytest.raises(InputError, match="runtime must be one of onnxruntime, openvino"):
        write_triton_repository(onnx_path, tmp_path / "r", backend="python", runtime="tvm")
    with pytest.raises(InputError, match="backend must be one of python, onnxruntime, tensorrt"):
        write_triton_repository(onnx_path, tmp_path / "r", backend="jax")
    xml = tmp_path / "m.openvino.xml"
    xml.write_text("<net/>")
    with pytest.raises(ArtifactError, match="needs its weights m.openvino.bin"):
        write_triton_repository(xml, tmp_path / "r")
    assert not (tmp_path / "r").exists()


# ---------------------------------------------------------------------------------------------- a live Triton
SETTINGS = [[0.0, 0.0], [0.3, 0.4], [0.6, 0.6], [0.2, 0.9], [np.inf, np.inf], [0.5, 0.1]]


@pytest.fixture(scope="module")
def session(onnx_path) -> AdaptiveSession:
    return AdaptiveSession(onnx_path, calibration=False)


@pytest.fixture(scope="module")
def photos(session) -> list[np.ndarray]:
    """Up to 6 held-out photos, preprocessed; skips (with the reason) below the 4 that a test sends at once."""
    found = find_photos("heldout")
    if len(found) < 4:
        pytest.skip(f"needs 4 held-out photos, {len(found)} installed: pip install scikit-image")
    return [session.preprocess(load_image(p)) for p in found[:6]]


@pytest.fixture(scope="module")
def live_repo(onnx_path, tmp_path_factory):
    # 20 ms batcher delay: concurrent requests (with different thresholds) land in one execute()
    return write_triton_repository(
        onnx_path, tmp_path_factory.mktemp("triton-live") / "repo", name="avit", backend="python", max_batch=8,
        instances=1, intra_op_threads=1, fixed={"fast": [0.6, 0.6]}, max_queue_delay_us=20000, max_queue_size=64,
        queue_timeout_s=30,
    )


@pytest.fixture(scope="module")
def server(live_repo, tmp_path_factory):
    needs_tritonserver()
    log = tmp_path_factory.mktemp("triton-log") / "server.log"
    srv = TritonServer(live_repo.root, log=log)
    srv.start(timeout_s=120)
    yield srv
    if srv.process is not None and srv.process.poll() is None:
        srv.stop()


def _http_infer(address, model, x, t=None):
    client = http.InferenceServerClient(address, network_timeout=60)
    try:
        inputs = [http.InferInput("images", list(x.shape), "FP32")]
        inputs[0].set_data_from_numpy(x)
        if t is not None:
            inputs.append(http.InferInput("pause_thresholds", list(t.shape), "FP32"))
            inputs[1].set_data_from_numpy(t)
        out = client.infer(model, inputs)
        return out.as_numpy("logits"), out.as_numpy("tokens_kept")
    finally:
        client.close()


def _grpc_infer(client, model, x, t=None):
    inputs = [grpc.InferInput("images", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    if t is not None:
        inputs.append(grpc.InferInput("pause_thresholds", list(t.shape), "FP32"))
        inputs[1].set_data_from_numpy(t)
    out = client.infer(model, inputs, client_timeout=60)
    return out.as_numpy("logits"), out.as_numpy("tokens_kept")


def _stats(server, model) -> tuple[int, int]:
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/stats", timeout=10) as answer:
        entry = json.loads(answer.read())["model_stats"][0]
    return int(entry["inference_count"]), int(entry["execution_count"])


def _assert_same(got, expected):
    logits, tokens = got
    np.testing.assert_array_equal(tokens, expected.tokens_kept)
    np.testing.assert_allclose(logits, expected.logits, atol=1e-4, rtol=0)


def test_concurrent_http_and_grpc_requests_with_their_own_thresholds_match_the_session(onnx_path, session, photos, tmp_path):
    """24 single-image requests, 12 over HTTP (a client per thread) and 12 over gRPC (one shared client), each
    photo × thresholds setting its own; Triton's dynamic batcher puts requests with different thresholds into
    one execute() call, and every answer equals AdaptiveSession.run of that image at its thresholds.

    A server of its own whose batcher never runs a partial batch in time (its delay, 10 minutes, is never
    reached): an execute() starts when the 8th request of a batch arrives, however slow the machine, so
    the 24 requests take exactly 3."""
    needs_tritonserver()
    repo = write_triton_repository(
        onnx_path, tmp_path / "repo", name="avit", backend="python", max_batch=8, instances=1, intra_op_threads=1,
        max_queue_delay_us=600_000_000, max_queue_size=64, queue_timeout_s=600,
    )
    with TritonServer(repo.root, log=tmp_path / "server.log") as server:
        jobs = [(i % len(photos), SETTINGS[i % len(SETTINGS)], "grpc" if i % 2 else "http") for i in range(24)]
        grpc_client = grpc.InferenceServerClient(server.grpc_address)
        barrier = threading.Barrier(12)

        def one(job):
            k, t, proto = job
            x, tt = photos[k][None], np.asarray([t], np.float32)
            if proto == "http":
                barrier.wait(timeout=30)
                return _http_infer(server.http_address, "avit", x, tt)
            return _grpc_infer(grpc_client, "avit", x, tt)

        with ThreadPoolExecutor(max_workers=24) as pool:
            answers = list(pool.map(one, jobs))
        grpc_client.close()
        for (k, t, _), got in zip(jobs, answers):
            _assert_same(got, session.run(photos[k][None], t))
        assert _stats(server, "avit") == (24, 3), "requests with different thresholds should fill execute() calls of 8"
        assert len({tuple(a[1][0]) for a in answers}) > 3, "the thresholds should change the token counts"


def test_one_request_with_several_images_runs_each_at_its_own_row(server, session, photos):
    x = np.stack(photos[:4])
    t = np.asarray(SETTINGS[:4], np.float32)
    got = _http_infer(server.http_address, "avit", x, t)
    assert got[0].shape == (4, 3, 64, 96) and got[1].shape == (4, 2) and got[1].dtype == np.int64
    for i in range(4):
        _assert_same((got[0][i : i + 1], got[1][i : i + 1]), session.run(x[i : i + 1], t[i]))
    grpc_client = grpc.InferenceServerClient(server.grpc_address)
    try:
        _assert_same(_grpc_infer(grpc_client, "avit", x), session.run(x, None))  # no thresholds: the defaults
        _assert_same(_grpc_infer(grpc_client, "avit_fast", x[:2]), session.run(x[:2], [0.6, 0.6]))  # fixed model
    finally:
        grpc_client.close()


def test_malformed_requests_are_answered_with_errors_and_the_server_stays_ready(server, session, photos):
    x = photos[0][None]
    client = http.InferenceServerClient(server.http_address, network_timeout=60)
    grpc_client = grpc.InferenceServerClient(server.grpc_address)

    def http_error(inputs, model="avit"):
        with pytest.raises(InferenceServerException) as info:
            client.infer(model, inputs)
        return str(info.value.status()), info.value.message()

    def tensor(name, array, dtype="FP32", module=http):
        t = module.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    try:
        status, message = http_error([tensor("images", np.zeros((1, 3, 32, 32), np.float32))])
        assert status == "400" and "unexpected shape for input 'images'" in message
        status, message = http_error([tensor("images", x.astype(np.float64), "FP64")])
        assert status == "400" and "data-type" in message
        status, message = http_error([tensor("pause_thresholds", np.zeros((1, 2), np.float32))])
        assert (status, message) == ("400", "the request has no 'images' input")
        status, message = http_error([tensor("images", x), tensor("pause_thresholds", np.array([[np.nan, 0.1]], np.float32))])
        assert (status, message) == ("400", "pause thresholds must not be NaN")  # model.py's own one-line error
        status, message = http_error([tensor("images", x), tensor("pause_thresholds", np.array([[-1, 0.1]], np.float32))])
        assert status == "400" and message.startswith("pause thresholds must be >= 0")
        status, message = http_error([tensor("images", np.full_like(x, np.inf))])
        assert (status, message) == ("400", "images contain NaN or infinite values")
        status, _ = http_error([tensor("images", x)], model="nope")
        assert status in ("400", "404")
        with pytest.raises(InferenceServerException) as info:
            grpc_client.infer("avit", [tensor("images", x, module=grpc), tensor("pause_thresholds", np.zeros((1, 3), np.float32), module=grpc)])
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT" and "pause_thresholds" in info.value.message()
        assert server.ready()
        _assert_same(_grpc_infer(grpc_client, "avit", x, np.asarray([[0.3, 0.4]], np.float32)), session.run(x, [0.3, 0.4]))
    finally:
        client.close()
        grpc_client.close()


def test_repository_config_has_the_queue_policy(live_repo):
    text = (live_repo.root / "avit" / "config.pbtxt").read_text()
    assert 'backend: "python"' in text and "max_queue_size: 64" in text and "default_timeout_microseconds: 30000000" in text
    assert (live_repo.root / "avit" / "1" / "model.py").is_file() and (live_repo.root / "avit" / "1" / "model.onnx").is_file()


def test_server_stops_cleanly(live_repo, session, photos, tmp_path):
    """A server of its own (no other test's server, whatever the order): after answering requests over
    HTTP and gRPC, SIGINT: Triton unloads the model and exits 0 (no client connection left open)."""
    needs_tritonserver()
    server = TritonServer(live_repo.root, log=tmp_path / "server.log").start(timeout_s=120)
    try:
        x, t = photos[0][None], np.asarray([[0.3, 0.4]], np.float32)
        _assert_same(_http_infer(server.http_address, "avit", x, t), session.run(x, t[0]))
        grpc_client = grpc.InferenceServerClient(server.grpc_address)
        try:
            _assert_same(_grpc_infer(grpc_client, "avit", x, t), session.run(x, t[0]))
        finally:
            grpc_client.close()
        assert server.ready()
        code = server.stop()
    finally:
        server.stop()
    assert code == 0
    log = server.log_text()
    import avit

    assert f"avit {avit.__version__} from {Path(avit.__file__).parent}: model.onnx on onnxruntime" in log  # this avit, not another
    assert "successfully unloaded 'avit'" in log or "successfully unloaded" in log, log[-2000:]


# ---------------------------------------------------------------------------------------------- avit triton-serve
def test_triton_serve_cli(live_repo, session, photos, tmp_path):
    needs_tritonserver()
    http_port, grpc_port = free_port(), free_port()
    log = tmp_path / "cli.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([*AVIT, "triton-serve", str(live_repo.root), "--http-port", str(http_port), "--grpc-port", str(grpc_port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "serving" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        x = photos[1][None]
        _assert_same(_http_infer(f"127.0.0.1:{http_port}", "avit", x, np.asarray([[0.2, 0.9]], np.float32)), session.run(x, [0.2, 0.9]))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log.read_text()
    assert f"127.0.0.1:{http_port}" in log.read_text()


def test_triton_serve_errors(onnx_path, live_repo, tmp_path):
    needs_tritonserver()
    assert_one_line_error(avit("triton-serve", tmp_path / "missing"), "model repository not found")
    write_triton_repository(onnx_path, tmp_path / "ort", backend="onnxruntime")
    assert_one_line_error(avit("triton-serve", tmp_path / "ort"), "has only the python backend; tiny (onnxruntime)")
    broken = tmp_path / "broken"
    shutil.copytree(live_repo.root / "avit", broken / "avit")
    (broken / "avit" / "1" / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="failed to load 'avit'.*not a(n ONNX| loadable ONNX) model"):
        TritonServer(broken).start(timeout_s=120)


def test_bundled_server_is_found():
    needs_tritonserver()
    bundle = find_bundled_triton()
    assert bundle.server.is_file() and bundle.stub.is_file() and bundle.libraries.is_dir()
