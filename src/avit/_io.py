"""Small file helpers shared by every stage."""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def current_umask() -> int:
    """The process umask (e.g. ``0o022``), read without changing it where the OS allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` onto ``path``.

    The temporary file sits in the destination folder (same file system) and keeps the suffix (so
    ``write`` may open it by type); the rename is atomic, and a
    failure — or an exception raised by ``write`` — leaves neither a half-written ``path`` nor the
    temporary file behind. The file gets the permissions of any newly created file, ``0o666`` less the
    process umask (``mkstemp`` alone would leave it owner-only, unreadable to a Triton container or
    another user).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_float(value: float) -> float | str:
    """A float for strict JSON, which has no infinity: ``inf`` → ``"inf"``, ``-inf`` → ``"-inf"``.

    avit writes infinite pause thresholds this way everywhere (ONNX metadata, sidecars, calibration
    files, HTTP answers, Triton configs); :func:`parse_json_float` reads them back.
    """
    value = float(value)
    return ("inf" if value > 0 else "-inf") if math.isinf(value) else value


def parse_json_float(value: float | int | str) -> float:
    """Inverse of :func:`json_float`: ``"inf"`` / ``"-inf"`` / numbers → float."""
    return float(value)


def format_values(values, digits: int = 4) -> str:
    """``[0.25, inf]`` → ``"0.25, inf"`` for tables and messages (``digits`` significant digits)."""
    return ", ".join("inf" if math.isinf(v) else ("-inf" if v == float("-inf") else f"{v:.{digits}g}") for v in values)


def parse_thresholds(text: str | None, name: str = "--thresholds") -> list[float] | None:
    """``"0.2,0.4"`` / ``"0,inf"`` → ``[0.2, 0.4]`` / ``[0.0, inf]``; None or blank → None.

    Args:
        text: Comma-separated numbers (pause thresholds in nats, keep ratios, ...).
        name: How the value is named in the error message (a CLI option, a query parameter).

    Raises:
        InputError: not a comma-separated list of numbers, or a NaN.
    """
    from avit.errors import InputError

    if text is None or not text.strip():
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise InputError(f"{name} {text!r} is not a comma-separated list of numbers (e.g. 0.2,0.4 or 0,inf)") from None
    if not values:
        raise InputError(f"{name} needs at least one value")
    if any(math.isnan(v) for v in values):
        raise InputError("pause thresholds must not be NaN")
    return values
