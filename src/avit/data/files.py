"""Image inputs of the commands (profile, calibrate, quantize, export): a folder, files, or the installed photos."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from avit.errors import InputError

#: File suffixes taken from a folder.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def spread(paths: Sequence[Path], limit: int | None) -> list[Path]:
    """At most ``limit`` of ``paths``, evenly spaced over the list (all when ``limit`` is None)."""
    paths = list(paths)
    if limit is None or limit >= len(paths):
        return paths
    if limit < 1:
        raise InputError(f"the image limit must be >= 1, got {limit}")
    step = len(paths) / limit
    return [paths[int(i * step)] for i in range(limit)]


def image_files(source: str | os.PathLike | None, split: str = "heldout", limit: int | None = None) -> list[Path]:
    """Image paths from ``source`` (a folder: its image files sorted by name; a file: itself), or the
    installed photos of ``split`` (:func:`avit.data.find_photos`) when ``source`` is None.

    Raises:
        InputError: missing folder/file, no images found.
    """
    if source is None:
        from avit.data import find_photos

        found = find_photos(split)
        if not found:
            raise InputError(
                f"no {split} photos installed: pass --images DIR, or pip install scikit-image "
                "(and apt-get install opencv-doc for more)"
            )
        return spread(found, limit)
    path = Path(source)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return spread(found, limit)
    if path.is_file():
        return [path]
    raise InputError(f"images not found: {path}")
