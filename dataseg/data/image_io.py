"""Reading images as training, evaluation, the predictor and the demo all see them.

One reader for every consumer, so that a file means the same pixels everywhere:

* **Orientation**: the EXIF orientation tag is applied (as detectron2's ``read_image`` and
  labelme do): an image is used as it is *displayed*, and its labels (label maps, polygons,
  boxes) must be drawn in that orientation. A label map's own EXIF tag is ignored: labels are
  read as stored.
* **Bit depth**: 16-bit images become 8-bit by keeping the high byte (``value >> 8``). That is
  what PIL does when it opens a 48-bit RGB PNG and what OpenCV's ``imread`` does, so a 16-bit
  grayscale image and its 48-bit RGB copy give the same pixels. (detectron2's ``read_image``
  converts 16-bit grayscale through PIL's ``convert("RGB")``, which clips every value above
  255: a 16-bit photo arrives almost white.) 32-bit integer and float images are refused: their
  range is not known.
"""

from typing import Optional, Tuple

import numpy as np
from PIL import Image

from detectron2.data.detection_utils import convert_PIL_to_numpy
from detectron2.utils.file_io import PathManager

__all__ = ["as_uint8_image", "display_size", "exif_orientation", "read_image", "to_8bit"]

_EXIF_ORIENTATION = 0x0112
# Orientations that rotate by 90 degrees (5-8): the displayed width is the stored height.
_TRANSPOSING = (5, 6, 7, 8)
_16BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# The transposition that displays each EXIF orientation (PIL's ImageOps.exif_transpose table).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an open PIL image (1, "as stored", when absent or unreadable)."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a corrupt EXIF block: detectron2's read_image ignores it too
        return 1
    return orientation if orientation in range(1, 9) else 1


def display_size(image: Image.Image) -> Tuple[int, int]:
    """(W, H) of an open PIL image once its EXIF orientation is applied (as training sees it)."""
    width, height = image.size
    return (height, width) if exif_orientation(image) in _TRANSPOSING else (width, height)


def to_8bit(image: Image.Image, file_name: str = "") -> Image.Image:
    """A 16-bit grayscale PIL image as 8-bit ("L", ``value >> 8``); other 8-bit modes unchanged.

    Raises:
        ValueError: 32-bit integer or float pixels (PIL modes "I", "F"), naming ``file_name``.
    """
    mode = image.mode
    # PNG holds at most 16 bits per channel; older Pillow opens 16-bit grayscale as "I".
    if mode in _16BIT_MODES or (mode == "I" and image.format == "PNG"):
        values = np.asarray(image)
        return Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    if mode in ("I", "F"):
        kind = "32-bit integer" if mode == "I" else "floating-point"
        raise ValueError(
            f"Image {file_name!r} has {kind} pixels (PIL mode {mode!r}) whose range is unknown; "
            "save it as an 8- or 16-bit image (PNG, JPEG, 16-bit TIFF).")
    return image


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """detectron2's ``read_image``, reading 16-bit images correctly (module docstring).

    Args:
        file_name: image path (any ``PathManager`` path).
        format: as detectron2's ``read_image``: "BGR", "RGB", "L", ... or None.
    Returns:
        (H, W, C) uint8 array in ``format``, in display orientation (EXIF applied).
    """
    with PathManager.open(file_name, "rb") as f:
        image = Image.open(f)
        # The tag is read before to_8bit, whose new image carries no EXIF block.
        orientation = exif_orientation(image)
        image = to_8bit(image, file_name)
        if orientation != 1:
            image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
        return convert_PIL_to_numpy(image, format)


def as_uint8_image(image: np.ndarray) -> np.ndarray:
    """An image array as uint8: 16-bit values keep their high byte (``>> 8``, as
    :func:`read_image`); any other dtype is returned unchanged (no copy)."""
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    return image
