"""Running a session over image files: the loop behind ``avit run``, with masks and overlays written."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avit.data.images import load_image
from avit.runtime.visualize import mask_image, overlay_image, save_png


@dataclasses.dataclass
class ImageResult:
    """One image of :func:`run_files`.

    Attributes:
        path: The image file.
        tokens_kept: Active patch tokens after each pause point (``[P]``).
        latency_ms: The backend call's wall time divided by the images in that call, in ms.
        mask, overlay: The PNGs written (None without ``output_dir``).
    """

    path: Path
    tokens_kept: list[int]
    latency_ms: float
    mask: Path | None = None
    overlay: Path | None = None


def run_files(
    session,
    paths: Sequence[str | os.PathLike],
    thresholds: Sequence[float] | np.ndarray | None = None,
    *,
    batch: int = 1,
    output_dir: str | os.PathLike | None = None,
) -> list[ImageResult]:
    """Run ``session`` on image files, ``batch`` per call, at one threshold setting.

    Args:
        session: An :class:`~avit.runtime.AdaptiveSession`.
        paths: Image files (any format Pillow reads).
        thresholds: ``[P]`` pause thresholds; None = the model's defaults.
        batch: Images per call (>= 1).
        output_dir: Write ``<stem>.mask.png`` (binarised at 0.5, original size) and ``<stem>.overlay.png`` here.

    Returns:
        One :class:`ImageResult` per path, in order.

    Raises:
        InputError: an unreadable image, bad thresholds, batch < 1.
    """
    from avit.errors import InputError

    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    paths = [Path(p) for p in paths]
    raw = [load_image(p) for p in paths]
    values = session.thresholds(thresholds)
    out = Path(output_dir) if output_dir is not None else None
    results: list[ImageResult] = []
    for start in range(0, len(raw), batch):
        chunk = raw[start : start + batch]
        result = session.run([session.preprocess(im) for im in chunk], values)
        probs = result.probabilities(session.info.output_activation)
        for i, im in enumerate(chunk):
            path = paths[start + i]
            row = ImageResult(path, result.tokens_kept[i].tolist(), result.latency_ms / len(chunk))
            if out is not None:
                row.mask = save_png(mask_image(probs[i], (im.shape[1], im.shape[0])), out / f"{path.stem}.mask.png")
                row.overlay = save_png(overlay_image(im, probs[i]), out / f"{path.stem}.overlay.png")
            results.append(row)
    return results
