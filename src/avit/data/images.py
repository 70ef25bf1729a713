"""Image loading and preprocessing (NumPy + Pillow only: the runtime must not need PyTorch).

The model input is ``float32 [B, 3, H, W]``: RGB in ``[0, 1]``, resized to the model's input size,
normalised per channel with the mean / std stored in the model (ONNX metadata or config).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from avit.errors import InputError


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB ``[H, W, 3]`` (grey and RGBA images are converted).

    Raises:
        InputError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as exc:
        raise InputError(f"cannot read image {path}: not an image format Pillow knows") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read image {path}: {_reason(exc)}") from exc


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes (PNG, JPEG, … anything Pillow reads) as uint8 RGB ``[H, W, 3]``.

    For services that receive uploads; ``name`` only appears in the error message.

    Raises:
        InputError: empty or undecodable data.
    """
    if not data:
        raise InputError(f"{name} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except UnidentifiedImageError as exc:
        raise InputError(f"cannot decode {name} as an image: not an image format Pillow knows") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot decode {name} as an image: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    """The first line of an exception's message with object reprs (``<… at 0x…>``) removed."""
    import re

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", text).strip() or type(exc).__name__


def preprocess(
    image: np.ndarray, size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """uint8 RGB ``[h, w, 3]`` → float32 ``[3, H, W]`` resized (bilinear) to ``size = (H, W)`` and normalised.

    Raises:
        InputError: ``image`` is not uint8 ``[h, w, 3]``.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"expected a uint8 RGB image [h, w, 3], got {image.dtype} {list(image.shape)}")
    height, width = int(size[0]), int(size[1])
    resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
    out = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def load_batch(
    paths: Sequence[str | os.PathLike], size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Load and preprocess image files into one float32 ``[B, 3, H, W]`` batch. Raises :class:`InputError`."""
    if not paths:
        raise InputError("no images given")
    return np.stack([preprocess(load_image(p), size, mean, std) for p in paths])
