"""Which images calibrate and which check: the split behind ``avit calibrate``."""

from __future__ import annotations

import os
from pathlib import Path

from avit.data.files import image_files, spread
from avit.errors import InputError


def split_images(
    images: str | os.PathLike | None = None,
    heldout: str | os.PathLike | None = None,
    *,
    max_images: int = 8,
    max_heldout: int = 16,
) -> tuple[list[Path], list[Path]]:
    """Calibration and held-out image files, never overlapping.

    * no ``images``: the installed training photos calibrate, ``heldout`` (default: the installed
      held-out photos) checks;
    * ``images`` and ``heldout`` folders: one each;
    * ``images`` alone: every fourth image (the 4th, 8th, …) is held out, the rest calibrate.

    At most ``max_images`` / ``max_heldout`` of each, evenly spread over what is there.

    Returns:
        ``(calibration, heldout)`` paths.

    Raises:
        InputError: missing folders, no images, or a single folder with fewer than 2 images.
    """
    if images is None:
        return image_files(None, "train", max_images), image_files(heldout, "heldout", max_heldout)
    all_paths = image_files(images, limit=None)
    if heldout is not None:
        return spread(all_paths, max_images), image_files(heldout, limit=max_heldout)
    held_all = all_paths[3::4]
    calib_all = [p for p in all_paths if p not in held_all]
    if not calib_all or not held_all:
        raise InputError(f"{images} has {len(all_paths)} image(s): give at least 2, or --heldout DIR")
    return spread(calib_all, max_images), spread(held_all, max_heldout)
