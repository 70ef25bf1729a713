"""Real offline photos and image preprocessing."""

from avit.data.images import decode_image, load_batch, load_image, preprocess
from avit.data.files import IMAGE_SUFFIXES, image_files, spread
from avit.data.photos import HELD_OUT, PHOTOS, find_photos, source_dir

__all__ = ["HELD_OUT", "IMAGE_SUFFIXES", "PHOTOS", "decode_image", "image_files", "spread", "find_photos", "load_batch", "load_image", "preprocess", "source_dir"]
