"""AdaptiveSession: input validation, defaults from metadata, concurrency with per-call thresholds."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest

from avit.errors import ArtifactError, InputError
from avit.exporter import export_onnx
from avit.runtime import AdaptiveSession
from conftest import tiny_model


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    model = tiny_model(default_thresholds=(0.5, 0.6))
    return export_onnx(model, tmp_path_factory.mktemp("rt") / "m.onnx", check=False).path


@pytest.fixture(scope="module")
def session(onnx_path):
    return AdaptiveSession(onnx_path)


def batch(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 64, 96)).astype(np.float32)


def test_defaults_come_from_metadata(session):
    assert session.info.default_thresholds == (0.5, 0.6)
    assert session.run(batch()).thresholds.tolist() == pytest.approx([0.5, 0.6])


@pytest.mark.parametrize(
    "images,message",
    [
        (np.zeros((1, 1, 64, 96), np.float32), "images must be float32 \\[B>=1, 3, 64, 96\\]"),
        (np.zeros((1, 3, 32, 32), np.float32), "images must be"),
        (np.zeros((3, 64, 96), np.float32), "images must be"),
        (np.zeros((0, 3, 64, 96), np.float32), "images must be"),
        (np.full((1, 3, 64, 96), np.nan, np.float32), "NaN or infinite"),
    ],
)
def test_bad_images(session, images, message):
    with pytest.raises(InputError, match=message):
        session.run(images)


@pytest.mark.parametrize(
    "thresholds,message",
    [([0.1], "expected 2 pause thresholds"), ([0.1, float("nan")], "NaN"), ([0.1, -1.0], ">= 0"), ([1, 2, 3], "expected 2")],
)
def test_bad_thresholds(session, thresholds, message):
    with pytest.raises(InputError, match=message):
        session.run(batch(), thresholds)


def test_not_an_avit_model(tmp_path):
    plain = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 18)],
        ir_version=9,
    )
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(ArtifactError, match="no avit metadata"):
        AdaptiveSession(tmp_path / "plain.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ArtifactError, match="not a loadable ONNX model"):
        AdaptiveSession(tmp_path / "junk.onnx")
    with pytest.raises(ArtifactError, match="not found"):
        AdaptiveSession(tmp_path / "missing.onnx")


def test_concurrent_calls_with_different_thresholds_match_serial(session):
    """8 threads, each with its own thresholds, give exactly the serial results."""
    settings = [[t, t + 0.1] for t in np.linspace(0.0, 1.2, 8)]
    jobs = [(batch(2, seed=i), settings[i % 8]) for i in range(32)]
    serial = [session.run(x, t) for x, t in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda job: session.run(*job), jobs))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.tokens_kept, b.tokens_kept)
        np.testing.assert_array_equal(a.logits, b.logits)
    kept = {tuple(r.tokens_kept.sum(axis=0)) for r in serial}
    assert len(kept) > 4, "the thresholds should produce different token counts"


def test_runtime_does_not_import_torch(onnx_path):
    code = (
        "import sys, numpy as np\n"
        "from avit.runtime import AdaptiveSession\n"
        f"s = AdaptiveSession({str(onnx_path)!r})\n"
        "s.run(np.zeros((1, 3, 64, 96), np.float32))\n"
        "assert 'torch' not in sys.modules, 'runtime imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_per_image_batch_layout_matches_padded(onnx_path):
    """batch_layout="per_image": every image runs at its own token count; same tokens and logits as the
    padded batch (padding never changes a real token), on a batch whose images keep different counts."""
    padded = AdaptiveSession(onnx_path, batch_layout="padded")
    per_image = AdaptiveSession(onnx_path, batch_layout="per_image")
    assert AdaptiveSession(onnx_path).batch_layout == "per_image"  # "auto" on the CPU execution provider
    x = batch(3, seed=5)
    a, b = padded.run(x, [0.5, 0.6]), per_image.run(x, [0.5, 0.6])
    assert len({tuple(k) for k in a.tokens_kept.tolist()}) > 1  # the images really keep different counts
    np.testing.assert_array_equal(b.tokens_kept, a.tokens_kept)
    np.testing.assert_allclose(b.logits, a.logits, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="batch_layout 'loop' is not one of auto, padded, per_image"):
        AdaptiveSession(onnx_path, batch_layout="loop")
