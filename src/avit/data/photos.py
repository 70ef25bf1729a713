"""Real photographs that install offline, with a fixed train / held-out split.

Sources (no download at run time):

* ``skimage`` — the photos shipped inside the scikit-image wheel (``pip install scikit-image``);
* ``matplotlib`` — ``grace_hopper.jpg`` from matplotlib's ``mpl-data/sample_data`` (``pip install matplotlib``);
* ``scikit-learn`` — ``china.jpg`` and ``flower.jpg`` from ``sklearn/datasets/images``
  (``pip install scikit-learn``);
* ``opencv-doc`` — Debian's ``opencv-doc`` package, ``/usr/share/doc/opencv-doc/examples/data``
  (``apt-get install opencv-doc``).

Only real photographs are listed (no renders, charts, logos, calibration boards or text). The held-out
split is fixed by name so that training (``avit adapt``) never sees the images that evaluation, the
benchmark and the demo report on, whichever sources are installed.

scikit-image's seven training photos are mostly grey or scientific (coins, moon, a retina, a micrograph,
the Hubble deep field); a portrait and two colour photos from matplotlib and scikit-learn (all three
installed by ``avit[demo]``) make the training split look like what users send, which is what default
thresholds chosen on it must hold on (measured in ``docs/finetune.md``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path

OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc/examples/data")

#: Photographs per source (file names).
PHOTOS: dict[str, tuple[str, ...]] = {
    "skimage": (
        "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
        "motorcycle_right.png", "retina.jpg", "ihc.png", "hubble_deep_field.jpg", "camera.png",
        "coins.png", "moon.png",
    ),
    "matplotlib": ("grace_hopper.jpg",),
    "scikit-learn": ("china.jpg", "flower.jpg"),
    "opencv-doc": (
        "HappyFish.jpg", "aero1.jpg", "aero3.jpg", "aloeL.jpg", "aloeR.jpg", "apple.jpg", "baboon.jpg",
        "basketball1.png", "basketball2.png", "board.jpg", "box_in_scene.png", "building.jpg",
        "butterfly.jpg", "ela_original.jpg", "fruits.jpg", "graf1.png", "graf3.png", "home.jpg", "left.jpg",
        "right.jpg", "leuvenA.jpg", "leuvenB.jpg", "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg",
        "pca_test1.jpg", "rubberwhale1.png", "rubberwhale2.png", "smarties.png", "squirrel_cls.jpg",
        "stuff.jpg",
    ),
}

#: Never used for training: evaluation, benchmarks and the demo report on these.
HELD_OUT: frozenset[str] = frozenset(
    {
        "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_right.png",
        "messi5.jpg", "fruits.jpg", "squirrel_cls.jpg", "butterfly.jpg", "home.jpg", "baboon.jpg",
        "orange.jpg", "smarties.png", "HappyFish.jpg", "building.jpg", "aloeR.jpg",
    }
)


#: pip sources: (package, folder inside the package).
PACKAGE_DIRS: dict[str, tuple[str, str]] = {
    "skimage": ("skimage", "data"),
    "matplotlib": ("matplotlib", "mpl-data/sample_data"),
    "scikit-learn": ("sklearn", "datasets/images"),
}


def source_dir(source: str) -> Path | None:
    """Folder holding ``source``'s photos, or None when that source is not installed.

    Raises:
        ValueError: unknown source name.
    """
    if source in PACKAGE_DIRS:
        package, subdir = PACKAGE_DIRS[source]
        spec = importlib.util.find_spec(package)  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = Path(next(iter(spec.submodule_search_locations))) / subdir
    elif source == "opencv-doc":
        folder = OPENCV_DOC_DIR
    else:
        raise ValueError(f"unknown photo source {source!r}; known: {', '.join(PHOTOS)}")
    return folder if folder.is_dir() else None


def find_photos(
    split: str = "all", sources: Iterable[str] = ("skimage", "matplotlib", "scikit-learn", "opencv-doc")
) -> list[Path]:
    """Paths of the installed photos of ``split`` (``"train"``, ``"heldout"`` or ``"all"``).

    Sources come in the order given — pip-installable ones first by default, so ``find_photos(...)[:n]``
    is the same on every machine that has them — each sorted by file name. Sources that are not
    installed contribute nothing.

    Raises:
        ValueError: unknown split or source.
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be train, heldout or all, got {split!r}")
    found: list[Path] = []
    for source in sources:
        folder = source_dir(source)
        if folder is None:
            continue
        mine = []
        for name in PHOTOS[source]:
            path = folder / name
            if path.is_file() and (split == "all" or (split == "heldout") == (name in HELD_OUT)):
                mine.append(path)
        found += sorted(mine, key=lambda p: p.name)
    return found
