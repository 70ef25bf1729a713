"""TensorRT path: what runs without TensorRT here, and the GPU tests a TensorRT machine runs.

Without TensorRT: the missing-TensorRT errors (one line, ONNX kept), the trtexec command builder,
optimization profiles, the ONNX prepared for TensorRT's parser, engine sidecars (write, read, metadata
round trip, corrupt/stale sidecars), plugin-library discovery, the fp16 ONNX export with its ONNX
Runtime parity against float32, ``avit validate`` (on ONNX models, and its error without TensorRT), and
``AdaptiveSession("x.engine")``.

With TensorRT, a GPU and the plugin library built (docs/plugins.md), the ``gpu_`` tests build engines
and compare them with ONNX Runtime; they skip, saying why, only when ``tensorrt`` is not importable.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest

from avit.errors import ArtifactError, BackendUnavailableError, InputError
from avit.exporter import export_onnx
from avit.exporter.tensorrt import build_engine, prepare_onnx, profile_shapes, read_model_info, trtexec_command
from avit.metadata import ModelInfo
from avit.models import save_checkpoint
from avit.runtime import AdaptiveSession
from avit._io import file_sha256
from avit.runtime import tensorrt as trt_support
from avit.runtime.tensorrt import (
    EngineSidecar,
    find_plugin_library,
    plugin_loader,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from avit.evaluation.parity import compare_logits
from avit.exporter.validate import validate
from conftest import tiny_config, tiny_model

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAVE_POLYGRAPHY = importlib.util.find_spec("polygraphy") is not None
needs_no_tensorrt = pytest.mark.skipif(HAVE_TENSORRT, reason="tensorrt is installed: the missing-TensorRT path does not apply")
needs_tensorrt = pytest.mark.skipif(
    not HAVE_TENSORRT, reason="tensorrt is not importable (needs 'avit[trt]', an NVIDIA GPU and the plugin library; see docs/tensorrt.md)"
)
AVIT = [sys.executable, "-m", "avit.cli"]


def avit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*AVIT, *map(str, args)], capture_output=True, text=True, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    model = tiny_model(default_thresholds=(0.4, 0.5))
    root = tmp_path_factory.mktemp("trt")
    return model, export_onnx(model, root / "tiny.onnx", check=False).path


@pytest.fixture(scope="module")
def fp16_export(fp32_onnx):
    model, path32 = fp32_onnx
    return export_onnx(model, path32.with_name("tiny.fp16.onnx"), precision="fp16")


def make_sidecar(onnx_path, engine_path, **overrides) -> EngineSidecar:
    proto, info = read_model_info(onnx_path)
    fields = dict(
        engine_sha256=file_sha256(engine_path),
        tensorrt_version="10.14.1",
        precision=info.precision,
        profile=profile_shapes(info, 1, 2, 4),
        plugin_library="/opt/avit/libavit_plugins_dynamic.so",
        plugin_sha256="0" * 64,
        plugin_loader="dynamic",
        onnx_path=str(onnx_path),
        onnx_sha256=file_sha256(onnx_path),
        metadata={p.key: p.value for p in proto.metadata_props},
        pause_points=list(info.pause_points),
        default_thresholds=[*info.default_thresholds, float("inf")],
    )
    fields.update(overrides)
    return EngineSidecar(**fields)


# ---------------------------------------------------------------------------------------------- no TensorRT
@needs_no_tensorrt
def test_build_engine_without_tensorrt_is_one_line(fp32_onnx):
    _, path = fp32_onnx
    before = path.read_bytes()
    with pytest.raises(BackendUnavailableError) as err:
        build_engine(path)
    assert str(err.value).startswith("TensorRT is not installed") and "\n" not in str(err.value)
    assert path.read_bytes() == before
    assert not path.with_suffix(".engine").exists() and not sidecar_path(path.with_suffix(".engine")).exists()


@needs_no_tensorrt
def test_cli_trt_on_existing_onnx_keeps_it(fp32_onnx):
    _, path = fp32_onnx
    before = path.read_bytes()
    line = one_line_error(avit("export", path, "--trt", "--max-batch", "4"), "TensorRT is not installed")
    assert line.endswith(f"the ONNX model is ready: {path}")
    assert path.read_bytes() == before


@needs_no_tensorrt
def test_cli_fp16_export_then_trt_without_tensorrt(tmp_path):
    ckpt = save_checkpoint(tiny_model(default_thresholds=(0.4, 0.5)), tmp_path / "m.ckpt", origin="test")
    proc = avit("export", ckpt, "--precision", "fp16", "--trt", "--no-check")
    line = one_line_error(proc, "TensorRT is not installed")
    fp16 = tmp_path / "m.fp16.onnx"
    assert line.endswith(f"the ONNX model is ready: {fp16}") and fp16.is_file()
    assert AdaptiveSession(fp16).info.precision == "fp16"


@needs_no_tensorrt
def test_engine_session_and_validate_without_tensorrt(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"not checked before TensorRT is imported")
    with pytest.raises(BackendUnavailableError) as err:
        AdaptiveSession(engine)
    assert "TensorRT is not installed" in str(err.value) and "x.engine cannot run here" in str(err.value)
    assert "\n" not in str(err.value)
    one_line_error(avit("validate", engine), "TensorRT is not installed")


def test_cli_usage_errors(fp32_onnx, fp16_export):
    _, path = fp32_onnx
    one_line_error(avit("export", path, "--trt", "--precision", "fp16"), "was exported as fp32")
    one_line_error(avit("export", path, "--trt", "--precision", "fp8"), "--precision must be fp32 or fp16")
    one_line_error(avit("validate", fp16_export.path), "give the ONNX reference")
    one_line_error(avit("validate", path, "--onnx", path, "--images", path), "is not a folder")


def test_bad_batches_fail_before_tensorrt_is_needed(fp32_onnx):
    _, path = fp32_onnx
    with pytest.raises(InputError, match="1 <= min <= opt <= max"):
        build_engine(path, min_batch=4, opt_batch=2, max_batch=8)
    with pytest.raises(ArtifactError, match="model not found"):
        build_engine(path.with_name("missing.onnx"))


# ---------------------------------------------------------------------------------------------- pure parts
def test_profile_shapes(fp32_onnx):
    _, path = fp32_onnx
    _, info = read_model_info(path)
    assert profile_shapes(info, 1, 2, 8) == {"images": {"min": [1, 3, 64, 96], "opt": [2, 3, 64, 96], "max": [8, 3, 64, 96]}}
    with pytest.raises(InputError):
        profile_shapes(info, 0, 1, 1)


def test_trtexec_command():
    profile = {"images": {"min": [1, 3, 448, 448], "opt": [2, 3, 448, 448], "max": [8, 3, 448, 448]}}
    cmd = trtexec_command(
        "out dir/m.onnx", "out dir/m.engine", profile, plugin_library="build/plugins/libavit_plugins.so",
        timing_cache="cache.bin", workspace_mb=2048,
    )
    args = shlex.split(cmd)
    assert args[:4] == ["trtexec", "--onnx=out dir/m.onnx", "--saveEngine=out dir/m.engine", "--stronglyTyped"]
    assert "--minShapes=images:1x3x448x448" in args and "--optShapes=images:2x3x448x448" in args
    assert "--maxShapes=images:8x3x448x448" in args
    assert "--staticPlugins=build/plugins/libavit_plugins.so" in args and "--enablePluginOverride" not in args
    assert {"--noTF32", "--memPoolSize=workspace:2048M", "--timingCacheFile=cache.bin"} <= set(args)
    assert args[-1] == "--skipInference"

    dyn = shlex.split(trtexec_command("m.onnx", "m.engine", profile, plugin_library="libavit_plugins_dynamic.so", tf32=True, plugin_override=True))
    assert "--dynamicPlugins=libavit_plugins_dynamic.so" in dyn and "--enablePluginOverride" in dyn
    assert "--noTF32" not in dyn and not any(a.startswith(("--memPoolSize", "--timingCacheFile")) for a in dyn)
    stock = shlex.split(trtexec_command("m.onnx", "m.engine", profile))
    assert not any("Plugins" in a or "PluginOverride" in a for a in stock)


def test_prepare_onnx_for_plugins_and_stock(fp32_onnx, images):
    _, path = fp32_onnx
    proto = onnx.load(str(path))
    n_functions = len(proto.functions)
    avit_nodes = [n for n in proto.graph.node if n.domain == "avit"]
    assert avit_nodes and n_functions

    plugins = prepare_onnx(proto, use_plugins=True)
    assert not [f for f in plugins.functions if f.domain == "avit"]
    kept = [n for n in plugins.graph.node if n.domain == "avit"]
    assert len(kept) == len(avit_nodes)
    for node in kept:
        attrs = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
        assert attrs["plugin_namespace"] == "avit" and attrs["plugin_version"] == "1"
    assert len(proto.functions) == n_functions  # the input is not modified

    stock = prepare_onnx(proto, use_plugins=False)
    assert len(stock.functions) == n_functions
    assert all(a.name not in ("plugin_namespace", "plugin_version") for n in stock.graph.node for a in n.attribute)
    import onnxruntime as ort

    feeds = {"images": images.numpy(), "pause_thresholds": np.array([0.4, 0.5], np.float32)}
    a = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(stock.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_plugin_names_match_the_ops():
    from avit.ops import _registry

    assert (trt_support.PLUGIN_NAMESPACE, trt_support.PLUGIN_VERSION) == (_registry.PLUGIN_NAMESPACE, _registry.PLUGIN_VERSION)


# ---------------------------------------------------------------------------------------------- sidecar
def test_sidecar_round_trip(fp32_onnx, tmp_path):
    _, path = fp32_onnx
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized engine bytes")
    written = write_sidecar(engine, make_sidecar(path, engine))
    assert written == tmp_path / "m.engine.json"
    body = json.loads(written.read_text())  # plain JSON: "inf" spelled as a string, never Infinity
    assert body["format"] == "avit-tensorrt-engine" and body["profile"]["images"]["max"] == [4, 3, 64, 96]
    back = read_sidecar(engine)
    assert back == make_sidecar(path, engine)
    assert back.info == AdaptiveSession(path).info  # the runtime's ModelInfo survives the trip
    assert ModelInfo.from_props(back.info.to_props()) == back.info
    assert (back.min_batch, back.max_batch) == (1, 4)
    assert body["default_thresholds"] == [0.4, 0.5, "inf"] and back.default_thresholds == [0.4, 0.5, float("inf")]


def test_sidecar_errors(fp32_onnx, tmp_path):
    _, path = fp32_onnx
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine one")
    with pytest.raises(ArtifactError, match="has no sidecar m.engine.json"):
        read_sidecar(engine)
    write_sidecar(engine, make_sidecar(path, engine))
    engine.write_bytes(b"engine two")  # rebuilt without its sidecar
    with pytest.raises(ArtifactError, match="describes another engine"):
        read_sidecar(engine)
    side = sidecar_path(engine)
    for text, message in (
        ("{not json", "is not JSON"),
        ('{"format": "something"}', "not an avit engine sidecar"),
        ('{"format": "avit-tensorrt-engine", "format_version": 99}', "sidecar format 99"),
        ('{"format": "avit-tensorrt-engine", "format_version": 1, "precision": "fp32"}', "is incomplete"),
    ):
        side.write_text(text)
        with pytest.raises(ArtifactError, match=message):
            read_sidecar(engine)
    body = json.loads(make_sidecar(path, engine).to_json())
    body["metadata"] = {"unrelated": "1"}
    side.write_text(json.dumps(body))
    with pytest.raises(ArtifactError, match="carries no avit metadata"):
        read_sidecar(engine)


# ---------------------------------------------------------------------------------------------- plugin library
def test_plugin_library_discovery(tmp_path, monkeypatch):
    monkeypatch.delenv(trt_support.PLUGIN_LIBRARY_ENV, raising=False)
    with pytest.raises(ArtifactError) as err:
        find_plugin_library(roots=[tmp_path])
    message = str(err.value)
    assert message.startswith("plugin library not found") and "cmake -S plugins" in message and "docs/plugins.md" in message
    assert str(tmp_path / "build/plugins/libavit_plugins*.so") in message

    # Discovery only looks at file names; these files are never loaded here.
    ci = tmp_path / "plugins" / "build-ci" / "libavit_plugins.so"
    ci.parent.mkdir(parents=True)
    ci.write_bytes(b"")
    assert find_plugin_library(roots=[tmp_path]) == ci
    static = tmp_path / "build" / "plugins" / "libavit_plugins.so"
    static.parent.mkdir(parents=True)
    static.write_bytes(b"")
    assert find_plugin_library(roots=[tmp_path]) == static  # build/plugins before plugins/build*
    dynamic = static.with_name("libavit_plugins_dynamic.so")
    dynamic.write_bytes(b"")
    assert find_plugin_library(roots=[tmp_path]) == dynamic  # TensorRT's own loader preferred
    assert (plugin_loader(static), plugin_loader(dynamic)) == ("static", "dynamic")

    monkeypatch.setenv(trt_support.PLUGIN_LIBRARY_ENV, str(ci))
    assert find_plugin_library(roots=[tmp_path]) == ci
    assert find_plugin_library(static, roots=[tmp_path]) == static  # --plugins wins over the environment
    monkeypatch.setenv(trt_support.PLUGIN_LIBRARY_ENV, str(tmp_path / "gone.so"))
    with pytest.raises(ArtifactError, match=r"plugin library not found: .*gone.so \(from \$AVIT_PLUGIN_LIBRARY"):
        find_plugin_library(roots=[tmp_path])
    with pytest.raises(ArtifactError, match="plugin library not found: .*missing.so"):
        find_plugin_library(tmp_path / "missing.so")


def test_trt_modules_are_torch_free():
    code = (
        "import sys, avit.runtime.tensorrt, avit.exporter.validate, avit.runtime.backends; "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------------------------------------- fp16 ONNX
def test_fp16_export_graph_and_parity(fp16_export, fp32_onnx):
    report = fp16_export
    # PyTorch float32 vs ONNX Runtime on the fp16 graph, every setting, batch 1 and 3, atol 5e-2.
    assert report.parity and all(r.ok for r in report.parity)
    assert max(r.max_abs_diff for r in report.parity) < 5e-3  # measured ~1e-3 on this model
    proto = onnx.load(str(report.path))
    elem = {v.name: v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)}
    F, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert elem == {"images": F, "pause_thresholds": F, "logits": F, "tokens_kept": I64}
    floats = [t.data_type for t in proto.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    assert floats.count(onnx.TensorProto.FLOAT16) >= 0.9 * len(floats)  # weights are fp16
    info = AdaptiveSession(report.path).info
    assert info.precision == "fp16" and AdaptiveSession(fp32_onnx[1]).info.precision == "fp32"
    assert sorted(report.adaptive_ops) == ["AvitEntropySelect", "AvitTokenGather", "AvitTokenScatter"]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(policy="keep_ratio", fill="stale", default_thresholds=(0.5, 0.5)),
        dict(policy="confidence", fill="canvas", decoder="upconv", decoder_channels=(8, 4), pause_points=(2,), depth=3,
             patch_size=8, img_size=(32, 48), reg_tokens=2),
    ],
    ids=["keep-ratio", "confidence-canvas-upconv"],
)
def test_fp16_export_other_configs(overrides, tmp_path):
    model = tiny_model(tiny_config(**overrides))
    report = export_onnx(model, tmp_path / "m.onnx", precision="fp16")
    assert all(r.ok for r in report.parity)


def test_validate_fp16_against_fp32(fp16_export, fp32_onnx):
    _, path32 = fp32_onnx
    report = validate(fp16_export.path, path32)
    assert report.ok and (report.atol, report.rtol) == (5e-2, 5e-2) and report.precision == "fp16"
    labels = {(r.label, r.batch) for r in report.rows}
    assert labels == {(lab, b) for lab in ("nothing paused", "default", "everything paused") for b in (1, 3)}
    assert report.rows[0].engine == ("polygraphy" if HAVE_POLYGRAPHY else "numpy")
    strict = validate(fp16_export.path, path32, atol=1e-6, rtol=1e-6, batches=[2], extra_thresholds=[[0.3, 0.3]])
    assert not strict.ok and all(r.tokens_equal for r in strict.rows)  # fp16 rounding shows; selections agree
    assert strict.rows[-1].label == "custom 1" and strict.rows[-1].thresholds == pytest.approx([0.3, 0.3])


def test_cli_validate_onnx(fp16_export, fp32_onnx, tmp_path):
    from PIL import Image

    _, path32 = fp32_onnx
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    proc = avit("validate", fp16_export.path, "--onnx", path32, "--images", folder, "--batch-sizes", "1,3", "--thresholds", "0.3,0.3")
    assert proc.returncode == 0, proc.stderr
    assert "matches" in proc.stdout and "custom 1" in proc.stdout
    one_line_error(avit("validate", fp16_export.path, "--onnx", path32, "--atol", "1e-7", "--rtol", "1e-7"), "validation failed on 6 of 6")


def test_compare_logits_semantics():
    ref = np.array([1.0, 100.0, 0.0], np.float32)
    # 100 + 0.5: abs 0.5 > atol but rel 0.005 <= rtol -> passes; 0 + 2e-3: abs > atol, rel huge -> fails.
    test = np.array([1.0, 100.5, 2e-3], np.float32)
    for use_polygraphy in (False, True):
        c = compare_logits(test, ref, atol=1e-3, rtol=1e-2, use_polygraphy=use_polygraphy)
        assert not c.ok and c.mismatches == 1 and c.max_abs_diff == pytest.approx(0.5)
        assert compare_logits(test[:2], ref[:2], atol=1e-3, rtol=1e-2, use_polygraphy=use_polygraphy).ok
    assert not compare_logits(test[:2], ref, 1, 1).ok  # shape mismatch
    assert not compare_logits(np.array([np.nan], np.float32), np.array([1.0], np.float32), 1, 1).ok


# ---------------------------------------------------------------------------------------------- GPU + TensorRT
@pytest.fixture(scope="module")
def engines(fp32_onnx, fp16_export, tmp_path_factory):
    """fp32 and fp16 engines of the tiny model, batch 1..4 (plugin library: $AVIT_PLUGIN_LIBRARY or build/plugins)."""
    _, path32 = fp32_onnx
    root = tmp_path_factory.mktemp("engines")
    e32 = build_engine(path32, root / "tiny.engine", min_batch=1, opt_batch=2, max_batch=4, timing_cache=root / "cache.bin")
    e16 = build_engine(fp16_export.path, root / "tiny.fp16.engine", min_batch=1, opt_batch=2, max_batch=4, timing_cache=root / "cache.bin")
    return e32, e16


@needs_tensorrt
def test_gpu_engine_files(engines, fp32_onnx):
    e32, e16 = engines
    import tensorrt

    for report, precision in ((e32, "fp32"), (e16, "fp16")):
        side = read_sidecar(report.engine_path)
        assert side.tensorrt_version == tensorrt.__version__ and side.precision == precision
        assert report.plugin_layers == side.builder["plugin_layers"] == 6  # 2 select + 2 gather + 2 scatter
        assert side.info.pause_points == (1, 3) and side.max_batch == 4
        assert "--staticPlugins=" in side.trtexec or "--dynamicPlugins=" in side.trtexec
    assert (e32.engine_path.parent / "cache.bin").stat().st_size > 0


@needs_tensorrt
@pytest.mark.parametrize("which", [0, 1], ids=["fp32", "fp16"])
def test_gpu_engine_matches_onnxruntime(engines, fp32_onnx, fp16_export, images, which):
    engine = engines[which].engine_path
    reference = (fp32_onnx[1], fp16_export.path)[which]
    report = validate(engine, reference, images=images.numpy(), batches=[1, 3, 4], extra_thresholds=[[0.3, 0.3], [0.6, 0.2]])
    bad = [(r.label, r.batch, r.max_abs_diff, r.tokens_kept, r.tokens_kept_reference) for r in report.rows if not r.ok]
    assert not bad, bad


@needs_tensorrt
def test_gpu_session_thresholds_per_call_and_threads(engines, images):
    session = AdaptiveSession(engines[0].engine_path)
    assert session.backend.name == "tensorrt"
    x = images.numpy()
    runs = {t: session.run(x, [t, t]) for t in (0.0, 0.4, float("inf"))}
    assert (runs[0.0].tokens_kept == 24).all() and (runs[float("inf")].tokens_kept == 0).all()
    assert runs[0.0].tokens_kept.sum() > runs[0.4].tokens_kept.sum() > 0
    results, errors = {}, []

    def worker(i):
        try:
            t = (0.0, 0.4, float("inf"))[i % 3]
            results[i] = session.run(x, [t, t])
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for i, res in results.items():
        want = runs[(0.0, 0.4, float("inf"))[i % 3]]
        assert np.array_equal(res.tokens_kept, want.tokens_kept) and np.allclose(res.logits, want.logits, atol=1e-5)
    with pytest.raises(InputError, match="batches of 1 to 4"):
        session.run(np.concatenate([x, x]), [0.4, 0.4])


@needs_tensorrt
def test_gpu_stock_engine_without_plugins(fp32_onnx, images, tmp_path):
    """The standard-op lowering through TensorRT (no plugins): the baseline the plugins are measured against."""
    report = build_engine(fp32_onnx[1], tmp_path / "stock.engine", use_plugins=False, max_batch=3)
    assert report.plugin_layers == 0 and report.sidecar.plugin_library is None
    assert validate(report.engine_path, fp32_onnx[1], images=images.numpy()).ok


@needs_tensorrt
def test_gpu_cli_export_and_validate(tmp_path):
    ckpt = save_checkpoint(tiny_model(default_thresholds=(0.4, 0.5)), tmp_path / "m.ckpt", origin="test")
    proc = avit("export", ckpt, "--trt", "--max-batch", "4", "--opt-batch", "2")
    assert proc.returncode == 0, proc.stderr
    assert "equivalent trtexec command" in proc.stdout and (tmp_path / "m.engine.json").is_file()
    proc = avit("validate", tmp_path / "m.engine")
    assert proc.returncode == 0, proc.stderr
