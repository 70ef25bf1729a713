"""The OpenVINO backend: IR export with parity, AdaptiveSession over an IR or an inlined ONNX, bf16,
thread safety, pause decisions, the CLI, and the one-line errors (issue 14)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from avit.errors import ArtifactError, BackendUnavailableError, InputError
from avit.exporter import export_onnx
from avit.metadata.calibration import calibration_path, save_calibration
from avit.runtime import AdaptiveSession
from conftest import tiny_model

ov = pytest.importorskip("openvino")

from avit.exporter.openvino_export import export_openvino  # noqa: E402
from avit.runtime.openvino_backend import bf16_supported, ir_path  # noqa: E402

BF16 = bf16_supported(ov.Core())
needs_bf16 = pytest.mark.skipif(not BF16, reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
AVIT = [sys.executable, "-m", "avit.cli"]


def batch(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 96)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(torch model, ONNX path, IR path, export report) of a tiny adaptive model."""
    model = tiny_model(default_thresholds=(0.5, 0.6))
    folder = tmp_path_factory.mktemp("ov")
    onnx_path = export_onnx(model, folder / "m.onnx", check=False).path
    report = export_openvino(onnx_path, model=model)
    return model, onnx_path, report.path, report


def test_ir_export_parity_metadata_and_f32_weights(exported):
    _, onnx_path, xml, report = exported
    assert xml == ir_path(onnx_path) and xml.name == "m.openvino.xml" and xml.with_suffix(".bin").is_file()
    assert report.reference == "pytorch" and report.parity
    assert all(r.ok and r.max_abs_diff <= 1e-4 for r in report.parity)
    assert {r.label for r in report.parity} >= {"nothing paused", "everything paused", "middle"}
    assert any(0 < k < 24 for r in report.parity for row in r.tokens_kept for k in row)  # something really paused
    core = ov.Core()
    model = core.read_model(str(xml))
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    meta = model.get_rt_info("framework").astype(dict)
    assert {k: v.astype(str) for k, v in meta.items() if k.startswith("avit.")} == {k: v for k, v in props.items() if k.startswith("avit.")}
    text = xml.read_text()
    assert 'element_type="f16"' not in text and 'element_type="f32"' in text  # weights stay float32
    assert report.nodes_marked > 0 and "DisablePrecisionConversion" in text  # token heads marked for bf16


@pytest.mark.parametrize("source", ["ir", "onnx"])
def test_session_matches_onnxruntime(exported, source):
    _, onnx_path, xml, _ = exported
    f32 = {"inference_precision": "f32"}  # ONNX Runtime's precision (auto would pick bf16 on a bf16 CPU)
    session = AdaptiveSession(xml, **f32) if source == "ir" else AdaptiveSession(onnx_path, backend="openvino", **f32)
    reference = AdaptiveSession(onnx_path)
    assert session.backend.name == "openvino" and reference.backend.name == "onnxruntime"
    assert session.info.default_thresholds == (0.5, 0.6) and session.batch_layout == "padded"  # measured: padded wins on OpenVINO
    x = batch(3, seed=3)
    counts = set()
    for t in ([0.0, 0.0], [0.3, 0.5], None, [0.5, 0.9], [np.inf, np.inf]):
        for b in (1, 3):
            got, want = session.run(x[:b], t), reference.run(x[:b], t)
            np.testing.assert_array_equal(got.tokens_kept, want.tokens_kept)
            assert np.abs(got.logits - want.logits).max() <= 1e-4
            assert got.logits.dtype == np.float32 and got.tokens_kept.dtype == np.int64
            counts.update(map(tuple, got.tokens_kept.tolist()))
    assert len(counts) > 3


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_calls_after_an_empty_selection_stay_correct(exported, precision):
    """A call that pauses every token (an empty token tensor in ONNX Runtime) must not change later calls:
    OpenVINO 2026.4 went wrong after one (wrong tokens kept; NaN logits under bf16) until the IR kept a
    padding slot (pad_empty_selections)."""
    if precision == "bf16" and not BF16:
        pytest.skip("this CPU has no native bf16")
    _, onnx_path, xml, _ = exported
    reference = AdaptiveSession(onnx_path)
    x = batch(2, seed=7)
    for first in ([np.inf, np.inf], [0.0, np.inf], [np.inf, 0.0]):
        session = AdaptiveSession(xml, inference_precision=precision)  # a fresh compiled model each time
        empty = session.run(x, first)
        np.testing.assert_array_equal(empty.tokens_kept, reference.run(x, first).tokens_kept)
        for t in ([0.0, 0.0], [0.3, 0.5], [0.5, 0.9]):
            got, want = session.run(x, t), reference.run(x, t)
            np.testing.assert_array_equal(got.tokens_kept, want.tokens_kept)
            assert np.isfinite(got.logits).all()
            if precision == "f32":
                assert np.abs(got.logits - want.logits).max() <= 1e-4


def test_threads_with_different_thresholds_match_serial(exported):
    """8 threads, each with its own thresholds, give exactly the serial results (a pool of infer requests)."""
    _, _, xml, _ = exported
    session = AdaptiveSession(xml, intra_op_threads=1)
    settings = [[t, t + 0.1] for t in np.linspace(0.0, 1.2, 8)]
    jobs = [(batch(2, seed=i), settings[i % 8]) for i in range(32)]
    serial = [session.run(x, t) for x, t in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda job: session.run(*job), jobs))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.tokens_kept, b.tokens_kept)
        np.testing.assert_array_equal(a.logits, b.logits)
    assert len({tuple(r.tokens_kept.sum(axis=0)) for r in serial}) > 4
    assert 1 < len(session.backend._idle) <= 8  # the pool grew with the concurrent callers


@needs_bf16
def test_bf16_runs_heads_f32_where_openvino_allows(exported):
    _, onnx_path, xml, _ = exported
    f32 = AdaptiveSession(xml, inference_precision="f32")
    for bf16 in (AdaptiveSession(xml, inference_precision="bf16"), AdaptiveSession(onnx_path, backend="openvino", inference_precision="bf16")):
        assert bf16.backend.inference_precision == "bf16"
        precisions = bf16.backend.runtime_precisions()
        assert "bf16" in precisions.values()
        x = batch(3, seed=4)
        a, b = f32.run(x, [0.0, 0.0]), bf16.run(x, [0.0, 0.0])
        assert 0 < np.abs(a.logits - b.logits).max() < 0.5  # really bf16, and close
        # the heads' LayerNorm (MVN nodes fed by the marked region) keep float32 under bf16
        mvn = {k: v for k, v in precisions.items() if k.startswith("MVN_")}
        assert "f32" in mvn.values() and "bf16" in mvn.values()


def test_pause_decisions_openvino_vs_onnxruntime(exported):
    from avit.profiling.pause_sets import pause_agreement

    _, onnx_path, _, _ = exported
    x = batch(3, seed=6)
    pa = pause_agreement(onnx_path, onnx_path, x, [0.3, 0.5], candidate_backend="openvino")
    assert pa.decision_agreement == [1.0, 1.0] and pa.paused_ref == pa.paused_cand and sum(pa.paused_ref) > 0


@needs_bf16
def test_pause_decisions_openvino_bf16_vs_f32(exported):
    from avit.profiling.pause_sets import pause_agreement

    _, onnx_path, _, _ = exported
    x = batch(3, seed=6)
    pb = pause_agreement(onnx_path, onnx_path, x, [0.3, 0.5], reference_backend="openvino", candidate_backend="openvino",
                         candidate_precision="bf16")
    assert all(0.9 <= a <= 1.0 for a in pb.decision_agreement) and sum(pb.paused_ref) > 0


def test_errors(exported, tmp_path, monkeypatch):
    _, onnx_path, xml, _ = exported
    with pytest.raises(InputError, match="inference precision 'fp8' is not one of auto, f32, bf16"):
        AdaptiveSession(xml, inference_precision="fp8")
    with pytest.raises(InputError, match="backend 'mxnet' is not one of"):
        AdaptiveSession(onnx_path, backend="mxnet")
    with pytest.raises(InputError, match="inference precision bf16 applies to the openvino backend"):
        AdaptiveSession(onnx_path, inference_precision="bf16")
    lonely = tmp_path / "lonely.openvino.xml"
    lonely.write_text(xml.read_text())
    with pytest.raises(ArtifactError, match="has no weights file lonely.openvino.bin beside it"):
        AdaptiveSession(lonely)
    import avit.runtime.openvino_backend as backend

    monkeypatch.setattr(backend, "bf16_supported", lambda core, device="CPU": False)
    with pytest.raises(BackendUnavailableError, match="bf16 needs native bfloat16"):
        AdaptiveSession(xml, inference_precision="bf16")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(BackendUnavailableError, match=r"OpenVINO is not installed: pip install 'avit\[openvino\]'"):
        AdaptiveSession(xml)


def test_runtime_stays_torch_free(exported):
    _, onnx_path, xml, _ = exported
    code = (
        "import sys, numpy as np\n"
        "from avit.runtime import AdaptiveSession\n"
        f"for s in (AdaptiveSession({str(xml)!r}), AdaptiveSession({str(onnx_path)!r}, backend='openvino')):\n"
        "    s.run(np.zeros((1, 3, 64, 96), np.float32))\n"
        "assert 'torch' not in sys.modules, 'runtime imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _copy_ir(xml: Path, folder: Path) -> Path:
    """The IR (xml + bin) copied into ``folder`` (the same bytes: calibrations made for one fit the other)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(xml.with_suffix(".bin"), folder / xml.with_suffix(".bin").name)
    return Path(shutil.copy(xml, folder / xml.name))


@pytest.fixture(scope="module")
def calibrated(exported, tmp_path_factory):
    """(IR path, calibration report): a copy of the IR in a folder of its own (so no other test's session
    finds the calibration) with an f32 ``avit calibrate`` beside it."""
    from avit.calibration.calibrate import calibrate
    from tiny_onnx import photo_dir

    _, _, xml, _ = exported
    root = tmp_path_factory.mktemp("ov-calibrated")
    copy = _copy_ir(xml, root / "ir")
    photos = sorted(photo_dir(root, n=8).iterdir())
    report = calibrate(copy, 1e6, photos[:6], heldout=photos[6:], batch=2, max_evals=6, repeats=1, final_rounds=1,
                       inference_precision="f32")
    return copy, report


def test_calibration_presets_and_budget_on_openvino(calibrated):
    """avit calibrate on the OpenVINO backend writes <model>.openvino.calib.json; the session loads its
    presets and latency budgets pick among them."""
    xml, report = calibrated
    assert report.path.name == "m.openvino.calib.json" and report.path.parent == xml.parent
    backend = json.loads(report.path.read_text())["backend"]
    assert (backend["name"], backend["inference_precision"]) == ("openvino", "f32")
    session = AdaptiveSession(xml, inference_precision="f32")
    assert session.presets and session.calibration is not None
    name, preset = next(iter(session.presets.items()))
    x = batch(2)
    by_name = session.run(x, preset=name)
    np.testing.assert_array_equal(by_name.tokens_kept, session.run(x, list(preset.thresholds)).tokens_kept)
    fastest = min(session.presets.values(), key=lambda p: p.latency_ms)
    budget = session.run(x, latency_budget_ms=fastest.latency_for_batch(2) * 1.0001)
    assert budget.within_budget and budget.preset in session.presets


def test_a_calibration_at_another_inference_precision_is_refused(calibrated, tmp_path):
    """Runs on every CPU: the f32 calibration with its backend's precision field edited to bf16 belongs to
    another inference precision; an f32 session does not load its presets and refuses the file when given it."""
    xml, report = calibrated
    copy = _copy_ir(xml, tmp_path)
    edited = calibration_path(copy)
    data = json.loads(report.path.read_text())
    data["backend"]["inference_precision"] = "bf16"
    save_calibration(edited, data)
    f32 = {"inference_precision": "f32"}
    assert AdaptiveSession(xml, **f32).presets  # unedited: loaded
    assert not AdaptiveSession(copy, **f32).presets and AdaptiveSession(copy, **f32).calibration is None
    with pytest.raises(ArtifactError, match="m.openvino.calib.json was measured on openvino bf16, this session runs openvino: "):
        AdaptiveSession(copy, calibration=edited, **f32)
    with pytest.raises(ArtifactError, match="measured on openvino bf16, this session runs openvino: "):
        AdaptiveSession(xml, calibration=edited, **f32)


@needs_bf16
def test_a_bf16_session_does_not_use_an_f32_calibration(calibrated):
    """The f32 file's latencies are not bf16's: not loaded by default, refused when asked for."""
    xml, report = calibrated
    assert AdaptiveSession(xml, inference_precision="f32").presets
    assert not AdaptiveSession(xml, inference_precision="bf16").presets
    auto = AdaptiveSession(xml)  # auto → bf16 on a CPU with native bf16
    assert auto.inference_precision == "bf16" and not auto.presets
    assert "measured on openvino, this session runs openvino bf16" in auto.calibration_note
    with pytest.raises(ArtifactError, match="measured on openvino, this session runs openvino bf16"):
        AdaptiveSession(xml, inference_precision="bf16", calibration=report.path)


def test_a_calibration_from_another_backend_is_not_used(exported, tmp_path):
    """m.calib.json measured on ONNX Runtime beside m.onnx: an OpenVINO session on that ONNX gets no
    presets (their latencies belong to another backend) and a one-line error when given the file."""
    from avit.calibration.calibrate import calibrate
    from tiny_onnx import photo_dir

    _, onnx_path, _, _ = exported
    photos = sorted(photo_dir(tmp_path, n=6).iterdir())
    report = calibrate(onnx_path, 1e6, photos[:4], heldout=photos[4:], batch=1, max_evals=4, repeats=1, final_rounds=1)
    try:
        assert report.path.name == "m.calib.json" and AdaptiveSession(onnx_path).presets
        assert not AdaptiveSession(onnx_path, backend="openvino").presets
        with pytest.raises(ArtifactError, match="measured on onnxruntime, this session runs openvino"):
            AdaptiveSession(onnx_path, backend="openvino", calibration=report.path)
    finally:
        report.path.unlink()


def test_predictor_on_openvino(exported):
    from avit.serving.predictor import Predictor

    _, onnx_path, _, _ = exported
    predictor = Predictor(onnx_path, backend="openvino", inference_precision="f32")
    try:
        card = predictor.model_card()
        assert card["backend"] == "openvino" and card["inference_precision"] == "f32"
    finally:
        predictor.close()


def avit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*AVIT, *map(str, args)], capture_output=True, text=True, timeout=600)


def one_line_error(proc: subprocess.CompletedProcess, pattern: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert lines[0].startswith("error: ") and pattern in lines[0], lines[0]


def test_cli_export_inspect_run(tmp_path):
    from PIL import Image

    from avit.models import save_checkpoint

    ckpt = save_checkpoint(tiny_model(default_thresholds=(0.4, 0.5)), tmp_path / "tiny.ckpt", origin="test")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(photo)
    proc = avit("export", ckpt, "-o", tmp_path / "tiny.onnx", "--openvino")
    assert proc.returncode == 0, proc.stderr
    assert "wrote " + str(tmp_path / "tiny.openvino.xml") in proc.stdout and "against pytorch" in proc.stdout
    proc = avit("inspect", tmp_path / "tiny.openvino.xml")
    assert proc.returncode == 0 and "OpenVINO IR, adaptive" in proc.stdout and "f32 ×" in proc.stdout, proc.stdout
    precision = "bf16" if BF16 else "f32"
    proc = avit("run", tmp_path / "tiny.openvino.xml", photo, "--inference-precision", precision, "--thresholds", "0.3,0.5")
    assert proc.returncode == 0 and f"on openvino {precision}:" in proc.stdout, proc.stderr
    proc = avit("run", tmp_path / "tiny.openvino.xml", photo, "--precision", "f32")  # the old spelling, hidden
    assert proc.returncode == 0 and "on openvino f32:" in proc.stdout, proc.stderr
    assert proc.stderr.strip() == ""  # a silent alias (RENAMED_OPTIONS): old scripts see no extra line
    proc = avit("run", tmp_path / "tiny.onnx", photo, "--backend", "openvino")  # auto: what the CPU runs natively
    assert proc.returncode == 0 and f"on openvino {precision} (auto)" in proc.stdout, proc.stderr
    proc = avit("profile", tmp_path / "tiny.openvino.xml", "--images", photo, "--iters", "1", "--no-stages", "--thresholds", "0.3,0.5",
                "--inference-precision", "f32")
    assert proc.returncode == 0 and "on openvino f32" in proc.stdout, proc.stderr
    help_text = avit("run", "--help").stdout
    assert "--inference-precision" in help_text and "--precision " not in help_text
    one_line_error(avit("run", tmp_path / "tiny.onnx", photo, "--inference-precision", "bf16"), "applies to the openvino backend (--backend openvino)")
    one_line_error(avit("run", tmp_path / "tiny.openvino.xml", photo, "--inference-precision", "fp8"), "is not one of auto, f32, bf16")
    proc = avit("profile", tmp_path / "tiny.openvino.xml", "--images", photo, "--rounds", "1", "--no-stages", "--thresholds", "0.3,0.5",
                "--inference-precision", "f32")
    assert proc.returncode == 0 and "on openvino f32" in proc.stdout, proc.stderr
    one_line_error(avit("run", tmp_path / "tiny.onnx", photo, "--backend", "tensorrt"), "the tensorrt backend cannot open tiny.onnx")
    code = ("import sys; sys.modules['openvino'] = None; from avit.cli.main import main; "
            f"sys.argv = ['avit', 'run', {str(tmp_path / 'tiny.openvino.xml')!r}, {str(photo)!r}]; main()")
    one_line_error(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300),
                   "OpenVINO is not installed: pip install 'avit[openvino]', so tiny.openvino.xml cannot run here")


def test_auto_precision_follows_the_cpu(exported, monkeypatch):
    """inference_precision="auto" (the default): bf16 where OpenVINO reports native bfloat16, else f32; the
    session says which (attribute and repr)."""
    import avit.runtime.openvino_backend as backend

    _, onnx_path, xml, _ = exported
    here = AdaptiveSession(xml)
    assert here.inference_precision == ("bf16" if BF16 else "f32") == here.backend.inference_precision
    assert here.backend.requested_precision == "auto"
    assert f"inference_precision={here.inference_precision}" in repr(here)
    monkeypatch.setattr(backend, "bf16_supported", lambda core, device="CPU": False)  # an AVX2-only CPU
    plain = AdaptiveSession(onnx_path, backend="openvino", inference_precision="auto")
    assert plain.inference_precision == "f32" and "bf16" not in plain.backend.runtime_precisions().values()
    ort = AdaptiveSession(onnx_path, inference_precision="auto")  # other backends: auto is their own precision
    assert ort.inference_precision is None and "inference_precision" not in repr(ort)
