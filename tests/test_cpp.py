"""The C++ runtime (runtime/cpp): its dependency-free part compiled with g++ and checked against a real
exported model's metadata; the CMake package + example through runtime/cpp/ci_build.sh; the OpenVINO
backend built by CMake against the openvino wheel's SDK and run on real photos against Python.

The ONNX Runtime / TensorRT backends need those SDKs' headers, which this machine lacks: ci_build.sh says
"skipped: …" for them (and the test checks it says so only when they are really missing).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from avit.errors import InputError
from avit.runtime import AdaptiveSession
from avit._io import file_sha256
from avit.runtime.tensorrt import EngineSidecar, write_sidecar
from tiny_onnx import tiny_onnx

REPO = Path(__file__).resolve().parents[1]
INCLUDE = REPO / "runtime" / "cpp" / "include"
CXX = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++) on PATH")


@pytest.fixture(scope="module")
def test_core(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("cpp") / "test_core"
    cmd = [CXX, "-std=c++17", "-O1", "-Wall", "-Wextra", "-pedantic", "-Werror", "-pthread", f"-I{INCLUDE}",
           str(REPO / "tests" / "cpp" / "test_core.cpp"), "-o", str(binary)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return binary


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The real tiny export: its path, its avit.* props as JSON, its session."""
    path = tiny_onnx(tmp_path_factory)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    props_file = tmp_path_factory.mktemp("props") / "props.json"
    props_file.write_text(json.dumps(props))
    return path, props, props_file, AdaptiveSession(path)


def run(binary, *args) -> tuple[int, str]:
    proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, timeout=60)
    return proc.returncode, proc.stdout.decode()


def as_python(info) -> dict:
    fix = lambda v: "inf" if math.isinf(v) else pytest.approx(v)  # noqa: E731
    return {
        "avit_version": info.avit_version, "variant": info.variant, "pause_points": list(info.pause_points),
        "policy": info.policy, "default_thresholds": [fix(t) for t in info.default_thresholds],
        "nothing_paused": fix(info.nothing_paused), "everything_paused": fix(info.everything_paused),
        "class_names": list(info.class_names), "in_chans": info.config["in_chans"], "input_size": list(info.input_size),
        "num_patches": info.num_patches, "num_classes": info.config["num_classes"],
        "mean": pytest.approx(list(info.mean)), "std": pytest.approx(list(info.std)),
        "output_activation": info.output_activation, "adaptive_ops": list(info.adaptive_ops), "precision": info.precision,
    }


def test_model_info_from_real_metadata(test_core, model):
    _, _, props_file, session = model
    code, out = run(test_core, "info", props_file)
    assert code == 0, out
    assert json.loads(out) == as_python(session.info)


def test_threshold_validation_matches_python(test_core, model, tmp_path):
    _, props, props_file, session = model
    code, out = run(test_core, "thresholds", props_file, "none")
    assert (code, out.strip()) == (0, "ok [0.5, 0.6]")
    assert run(test_core, "thresholds", props_file, "0.2,inf") == (0, "ok [0.2, inf]\n")
    for bad in ([0.1], [0.1, -1.0], [1.0, 2.0, 3.0]):
        with pytest.raises(InputError) as err:
            session.thresholds(bad)
        code, out = run(test_core, "thresholds", props_file, ",".join(map(str, bad)))
        assert code == 1 and out.startswith("error: ")
        py, cc = str(err.value), out.strip()[len("error: "):]
        assert cc.split(", got")[0] == py.split(", got")[0], (cc, py)
    assert run(test_core, "thresholds", props_file, "a,b")[1].startswith("error: thresholds 'a,b' is not a comma-separated list")
    keep = dict(props, **{"avit.policy": "keep_ratio"})
    keep_file = tmp_path / "keep.json"
    keep_file.write_text(json.dumps(keep))
    assert run(test_core, "thresholds", keep_file, "0.5,1.5")[1].startswith("error: keep ratios must lie in [0, 1]")


def test_metadata_errors(test_core, model, tmp_path):
    _, props, _, _ = model
    cases = {
        "none.json": ({}, "carries no avit metadata"),
        "v2.json": (dict(props, **{"avit.format_version": "2"}), "has avit metadata format 2, this avit reads 1"),
        "bad.json": (dict(props, **{"avit.pause_points": "[1, "}), "has malformed avit metadata (invalid JSON"),
        "gone.json": ({k: v for k, v in props.items() if k != "avit.mean"}, "missing avit.mean"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        code, out = run(test_core, "info", tmp_path / name)
        assert code == 1 and message in out, out
    assert run(test_core, "json", '{"a": [1, 2.5e3, "x\\u00e9"], "b": {"c": null}}') == (0, "object\n")
    assert run(test_core, "json", '"caf\\u00e9"')[1] == "string:café\n"
    assert "invalid JSON" in run(test_core, "json", '{"a": 1,}')[1]


def test_engine_sidecar_written_by_python(test_core, model, tmp_path):
    path, props, _, session = model
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine bytes")
    write_sidecar(engine, EngineSidecar(
        engine_sha256=file_sha256(engine), tensorrt_version="10.14.1.48", precision="fp32",
        profile={"images": {"min": [1, 3, 64, 96], "opt": [4, 3, 64, 96], "max": [8, 3, 64, 96]}},
        plugin_library="/opt/avit/libavit_plugins.so", plugin_sha256="0" * 64, plugin_loader="static",
        onnx_path=str(path), onnx_sha256=file_sha256(path), metadata=props,
        pause_points=[1, 3], default_thresholds=[0.5, 0.6],
    ))
    code, out = run(test_core, "sidecar", engine)
    assert code == 0, out
    got = json.loads(out)
    assert (got["tensorrt_version"], got["min_batch"], got["max_batch"]) == ("10.14.1.48", 1, 8)
    assert (got["plugin_library"], got["plugin_loader"]) == ("/opt/avit/libavit_plugins.so", "static")
    assert got["info"] == as_python(session.info)
    code, out = run(test_core, "sidecar", tmp_path / "other.engine")
    assert code == 1 and "has no sidecar" in out


def test_normalize_matches_python_preprocess(test_core, model, tmp_path):
    _, _, props_file, session = model
    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)  # already the input size
    (tmp_path / "rgb.raw").write_bytes(rgb.tobytes())
    proc = subprocess.run([str(test_core), "normalize", str(props_file), str(tmp_path / "rgb.raw")], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    got = np.frombuffer(proc.stdout, dtype=np.float32).reshape(3, 64, 96)
    np.testing.assert_allclose(got, session.preprocess(rgb), atol=1e-6)


def test_session_over_a_backend_validates_and_keeps_per_call_thresholds(test_core, model):
    _, _, props_file, _ = model
    code, out = run(test_core, "session", props_file)
    assert code == 0, out
    got = json.loads(out)
    assert got["errors"][0] == "images must be float32 [B>=1, 3, 64, 96], got [2, 3, 65, 96]"
    assert got["errors"][1].startswith("image buffer holds 3 floats")
    assert got["errors"][2] == "expected 2 pause thresholds (one per pause point [1, 3]), got 1"
    assert got["calls"] == 8 * 50 + 1 and got["wrong"] == 0 and got["defaults"] == pytest.approx([0.5, 0.6])


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")
def test_ci_build_script(tmp_path):
    env = dict(os.environ, AVIT_PYTHON=sys.executable)  # OpenVINO: the wheel of the Python running the tests
    proc = subprocess.run(["bash", str(REPO / "runtime" / "cpp" / "ci_build.sh"), str(tmp_path / "build")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "built: avit package (find_package(avit)" in proc.stdout
    have_ort = any((Path(root) / "include" / "onnxruntime_cxx_api.h").is_file() or
                   (Path(root) / "include" / "onnxruntime" / "onnxruntime_cxx_api.h").is_file()
                   for root in (os.environ.get("onnxruntime_ROOT", ""), "/usr/local", "/usr", "/opt/onnxruntime") if root)
    skipped = "skipped: ONNX Runtime headers not found (set onnxruntime_ROOT)" in proc.stdout
    assert skipped != have_ort, proc.stdout
    have_ov = importlib.util.find_spec("openvino") is not None
    assert ("skipped: OpenVINO not found" in proc.stdout) != have_ov, proc.stdout
    example = tmp_path / "build" / "example" / "avit_cpp_service"
    bad = subprocess.run([str(example), str(tmp_path / "missing.onnx")], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and bad.stderr.strip() == f"error: model not found: {tmp_path / 'missing.onnx'}"


# ---------------------------------------------------------------------------------------------- OpenVINO
@pytest.fixture(scope="module")
def openvino_service(tmp_path_factory, model):
    """examples/cpp_service built by CMake with the OpenVINO backend (the wheel's SDK, its CMake package
    found from Python), and the tiny model's OpenVINO IR."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake not on PATH")
    ov = pytest.importorskip("openvino", reason="pip install openvino (the C++ OpenVINO backend builds against its wheel)")
    from avit.exporter.openvino_export import export_openvino

    onnx_path = model[0]
    xml = export_openvino(onnx_path, tmp_path_factory.mktemp("ov-ir") / "tiny.openvino.xml").path
    build = tmp_path_factory.mktemp("ov-build")
    cmake_dir = Path(ov.__file__).parent / "cmake"
    configure = subprocess.run(["cmake", "-S", str(REPO / "runtime" / "cpp"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                                f"-DOpenVINO_DIR={cmake_dir}"], capture_output=True, text=True, timeout=600)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    assert f"avit: OpenVINO backend: OpenVINO {ov.__version__.split('-')[0]}" in configure.stdout, configure.stdout
    build_run = subprocess.run(["cmake", "--build", str(build), "--target", "avit_cpp_service", "-j", "2"],
                               capture_output=True, text=True, timeout=600)
    assert build_run.returncode == 0, build_run.stdout[-3000:] + build_run.stderr[-3000:]
    return build / "examples" / "cpp_service" / "avit_cpp_service", xml


def photo_ppms(folder: Path, session, count: int = 4) -> list[tuple[Path, np.ndarray]]:
    """Real photos at the model's input size as binary PPM, and their model inputs (float32 [3, H, W]).

    The photo is resized once here (Pillow, as the Python runtime does); at the model's own size neither
    side resizes again, so both see the same pixels.
    """
    from PIL import Image

    from avit.data import find_photos
    from avit.data.images import load_image

    photos = find_photos()[:count]
    if not photos:
        pytest.skip("no photos installed (pip install scikit-image)")
    h, w = session.info.input_size
    out = []
    for i, path in enumerate(photos):
        rgb = np.asarray(Image.fromarray(load_image(path)).resize((w, h), Image.BILINEAR))
        ppm = folder / f"photo{i}.ppm"
        ppm.write_bytes(b"P6\n%d %d\n255\n" % (w, h) + rgb.tobytes())
        out.append((ppm, session.preprocess(rgb)))
    return out


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_cpp_service_openvino_matches_python_on_photos(openvino_service, tmp_path, precision):
    """The C++ service on the OpenVINO backend, 4 workers, real photos × several thresholds: the logits
    within 1e-4 of Python's AdaptiveSession on the same IR and the same token counts."""
    from avit.runtime.openvino_backend import bf16_supported, import_openvino

    if precision == "bf16" and not bf16_supported(import_openvino().Core()):
        pytest.skip("this CPU has no native bf16")
    binary, xml = openvino_service
    session = AdaptiveSession(xml, inference_precision=precision, intra_op_threads=1, calibration=False)
    photos = photo_ppms(tmp_path, session)
    settings = [None, [0.0, 0.0], [0.3, 0.5], [0.5, 0.9], [math.inf, math.inf]]
    requests = [(ppm, x, t) for ppm, x in photos for t in settings]
    lines = "".join(f"{ppm} {'' if t is None else ','.join('inf' if math.isinf(v) else repr(v) for v in t)}\n"
                    for ppm, _, t in requests)
    logits_dir = tmp_path / "logits"
    logits_dir.mkdir()
    proc = subprocess.run([str(binary), str(xml), "--workers", "4", "--threads", "1", "--precision", precision,
                           "--logits", str(logits_dir)], input=lines, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"{xml} on openvino" in proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(answers) == len(requests)
    # Python from 8 threads at once, each request with its own thresholds: the same results as serial calls
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda r: session.run(r[1][None], r[2]), requests))
    counts = set()
    for (ppm, _, t), answer, want in zip(requests, answers, results):
        assert "error" not in answer, answer
        assert answer["image"] == str(ppm)
        assert answer["tokens_kept"] == want.tokens_kept[0].tolist(), (ppm.name, t)
        got = np.fromfile(answer["logits_file"], dtype=np.float32).reshape(want.logits.shape)
        assert np.abs(got - want.logits).max() <= 1e-4, (ppm.name, t)
        counts.add(tuple(answer["tokens_kept"]))
    assert len(counts) > 3  # the thresholds really change what is kept
    bad = subprocess.run([str(binary), str(xml), "--precision", "fp8"], input="", capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: inference precision must be f32 or bf16, got 'fp8'"
