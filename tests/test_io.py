"""avit._io: atomic writes leave files with the permissions the umask asks for."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from avit._io import atomic_write, current_umask


@pytest.fixture
def umask():
    """Set the process umask for one test and put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077, 0o027])
def test_atomic_write_honours_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    path = atomic_write(tmp_path / "sub" / "calib.json", lambda tmp: Path(tmp).write_text("{}"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_text() == "{}"
    assert [p.name for p in path.parent.iterdir()] == ["calib.json"]  # no temporary file left


def test_atomic_write_replaces_and_cleans_up_on_failure(tmp_path, umask):
    umask(0o022)
    path = tmp_path / "m.onnx"
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"one"))
    os.chmod(path, 0o600)

    def fail(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"one" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(b"two"))
    assert path.read_bytes() == b"two" and stat.S_IMODE(path.stat().st_mode) == 0o644
