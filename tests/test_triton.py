"""`avit triton-repo`: config.pbtxt parsed with Triton's own schema, the model copies run like the original."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format

from avit.errors import ArtifactError, InputError
from avit.exporter.triton import TritonModelSpec, config_pbtxt, write_triton_repository
from avit._io import file_sha256
from avit.runtime.tensorrt import EngineSidecar, write_sidecar
from test_cli import assert_one_line_error, avit
from tiny_onnx import tiny_onnx

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'avit[triton]'")
MC = model_config_pb2.ModelConfig
TYPE_FP32, TYPE_INT64 = model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_INT64


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
        onnx_path, out, name="avit", max_batch=4, instances=2, device="cpu", fixed={"fast": [0.6, 0.6]},
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
    proc = avit("triton-repo", onnx_path, "-o", out, "--fixed", "fast=0.6,0.6", "--max-batch", "8")
    assert proc.returncode == 0, proc.stderr
    assert "tiny_fast" in proc.stdout and f"tritonserver --model-repository={out.resolve()}" in proc.stdout
    assert parse(out / "tiny_fast" / "config.pbtxt").max_batch_size == 8
    assert_one_line_error(avit("triton-repo", onnx_path, "-o", out), "already holds tiny (use --overwrite to replace)")
    assert avit("triton-repo", onnx_path, "-o", out, "--overwrite").returncode == 0
    assert_one_line_error(avit("triton-repo", onnx_path, "-o", tmp_path / "x", "--fixed", "0.6,0.6"), "must look like NAME=0.2,0.4")
    assert_one_line_error(avit("triton-repo", tmp_path / "missing.onnx", "-o", tmp_path / "x"), "model not found")
    assert_one_line_error(avit("triton-repo", onnx_path, "-o", tmp_path / "x", "--device", "tpu"), "device must be one of auto, cpu, gpu")
