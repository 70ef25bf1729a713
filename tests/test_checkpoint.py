"""Checkpoint round trip and every way a checkpoint file can be wrong."""

from __future__ import annotations

import pickle

import pytest
import torch

from avit.errors import CheckpointError
from avit.models import load_checkpoint, save_checkpoint
from conftest import tiny_model


def test_roundtrip(tmp_path, images):
    model = tiny_model(default_thresholds=(0.2, 0.3))
    path = save_checkpoint(model, tmp_path / "m.ckpt", source="test", steps=3)
    loaded, meta = load_checkpoint(path)
    assert meta == {"source": "test", "steps": 3}
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        a, ka = model(images)
        b, kb = loaded(images)
    assert torch.equal(a, b) and torch.equal(ka, kb)
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]  # no temp file left


def test_missing(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_truncated(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / "m.ckpt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "g.ckpt"
    path.write_bytes(b"\x00\x01not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    path.write_bytes(b"junk\n")  # a text file: the weights-only unpickler fails on its own memo (KeyError)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_foreign_pickle_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"format": "avit-checkpoint", "x": Evil()}, f)
    with pytest.raises(CheckpointError, match="not an avit checkpoint"):
        load_checkpoint(path)
    assert "this must never run" not in capsys.readouterr().out


def test_plain_state_dict_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(CheckpointError, match="no 'avit-checkpoint' header"):
        load_checkpoint(path)


def test_missing_and_unexpected_keys(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / "m.ckpt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"].pop("blocks.0.attn.qkv.weight")
    payload["state_dict"]["bogus.weight"] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="missing 1 weights .*blocks.0.attn.qkv.weight.*1 unexpected"):
        load_checkpoint(path)


def test_shape_mismatch(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / "m.ckpt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["norm.weight"] = torch.zeros(7)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="norm.weight has shape \\[7\\], expected \\[32\\]"):
        load_checkpoint(path)


def test_invalid_config(tmp_path):
    path = save_checkpoint(tiny_model(), tmp_path / "m.ckpt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["pause_points"] = [9]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="pause_points"):
        load_checkpoint(path)
