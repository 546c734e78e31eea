"""One image reader for training, evaluation, the predictor and the demo: 16-bit images and
EXIF orientation read as the labels expect them."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image as detectron2_read_image

from dataseg.data import DatasetValidationError, SemanticDatasetMapper, register_semantic_dataset
from dataseg.data.image_io import as_uint8_image, read_image

# 16-bit values whose high bytes are 16 (left half) and 200 (right half): 8-bit mean 108.
_HIGH = np.array([16, 200], dtype=np.uint16)
_LOW = np.array([0xFF, 0x80], dtype=np.uint16)  # low bytes that rounding would count


def _gray16(height=8, width=8):
    values = np.empty((height, width), np.uint16)
    half = width // 2
    values[:, :half] = (_HIGH[0] << 8) | _LOW[0]
    values[:, half:] = (_HIGH[1] << 8) | _LOW[1]
    return values


def _semantic_dataset(tmp_path, name, image: Image.Image, label: np.ndarray, **save_kwargs):
    img_dir, lab_dir = tmp_path / "img", tmp_path / "lab"
    img_dir.mkdir()
    lab_dir.mkdir()
    image.save(img_dir / "a.png", **save_kwargs)
    Image.fromarray(label.astype(np.uint8)).save(lab_dir / "a.png")
    register_semantic_dataset(name, str(img_dir), str(lab_dir), ["dark", "bright"],
                              image_ext="png", replace=True)
    return str(img_dir / "a.png")


def _train_mapped(name):
    """The training mapper's output for the dataset's one image, without augmentation (so
    pixel values are exactly what was read)."""
    mapper = SemanticDatasetMapper(is_train=True, dataset_name=name, augmentations=[],
                                   image_format="BGR")
    return mapper(DatasetCatalog.get(name)[0])


# ---- 16-bit images -----------------------------------------------------------------------
def test_16bit_grayscale_png_reads_as_its_high_byte(tmp_path):
    path = str(tmp_path / "gray16.png")
    Image.fromarray(_gray16()).save(path)
    assert Image.open(path).mode == "I;16"
    # Before: PIL's convert("RGB") clipped every value to 255 (mean 255, an all-white photo).
    assert detectron2_read_image(path, format="BGR").mean() == 255
    for fmt, channels in (("BGR", 3), ("RGB", 3), ("L", 1)):
        image = read_image(path, format=fmt)
        assert image.dtype == np.uint8 and image.shape == (8, 8, channels)
        assert image.mean() == 108.0
        assert (image[:, :4] == 16).all() and (image[:, 4:] == 200).all()


def test_48bit_rgb_reads_as_before_and_as_its_gray_twin(tmp_path):
    import cv2

    rgb16 = np.stack([_gray16()] * 3, axis=-1)
    path48, path16 = str(tmp_path / "rgb48.png"), str(tmp_path / "gray16.png")
    cv2.imwrite(path48, rgb16)  # PIL writes no 48-bit RGB; OpenCV does
    Image.fromarray(_gray16()).save(path16)
    assert np.array_equal(read_image(path48, format="BGR"),
                          detectron2_read_image(path48, format="BGR"))
    assert np.array_equal(read_image(path48, format="BGR"), read_image(path16, format="BGR"))
    # OpenCV's own 8-bit reading of both files agrees too (the predictor's usual input).
    assert np.array_equal(cv2.imread(path16), read_image(path16, format="BGR"))


def test_16bit_image_in_the_training_mapper(tmp_path):
    label = np.zeros((8, 8))
    label[:, 4:] = 1
    _semantic_dataset(tmp_path, "t_io_gray16", Image.fromarray(_gray16()), label)
    out = _train_mapped("t_io_gray16")
    image = out["image"].numpy()
    assert image.shape == (3, 8, 8)
    assert image.mean() == 108.0  # before: 255.0
    assert out["instances"].gt_classes.tolist() == [0, 1]


def test_predictor_input_arrays_of_16_bits():
    values = np.stack([_gray16()] * 3, axis=-1)
    image = as_uint8_image(values)
    assert image.dtype == np.uint8 and image.mean() == 108.0
    eight = np.zeros((2, 2, 3), np.uint8)
    assert as_uint8_image(eight) is eight


def test_float_images_are_refused_with_the_file_name(tmp_path):
    path = str(tmp_path / "float.tif")
    Image.fromarray(np.zeros((4, 4), np.float32)).save(path)
    with pytest.raises(ValueError, match=r"float\.tif.*floating-point"):
        read_image(path, format="BGR")


# ---- EXIF orientation --------------------------------------------------------------------
def _exif_image(display: np.ndarray, orientation: int) -> Image.Image:
    """The stored image whose display (EXIF ``orientation`` applied) is ``display``."""
    undo = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    return Image.fromarray(display).transpose(undo)


def _save_kwargs(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return {"exif": exif}


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_image_with_a_display_oriented_label(tmp_path, orientation):
    # Displayed 10 wide, 20 high: the top half is bright and labelled "bright" (labelme's
    # export: the label is drawn on the displayed photo). Stored 20 wide, 10 high.
    display = np.zeros((20, 10, 3), np.uint8)
    display[:10] = 200
    label = np.zeros((20, 10))
    label[:10] = 1
    name = f"t_io_exif_{orientation}"
    path = _semantic_dataset(tmp_path, name, _exif_image(display, orientation), label,
                             **_save_kwargs(orientation))
    assert Image.open(path).size == (20, 10)
    # Before: refused, comparing the stored 20x10 with the label's 10x20.
    dicts = DatasetCatalog.get(name)
    out = _train_mapped(name)
    image = out["image"].numpy()
    assert image.shape == (3, 20, 10)
    # The mapper's image and label agree pixel for pixel.
    bright = out["sem_seg"].numpy() == 1
    assert (image[:, bright] == 200).all() and (image[:, ~bright] == 0).all()
    assert len(dicts) == 1


@pytest.mark.parametrize("orientation", [6, 8])
def test_label_drawn_on_the_stored_pixels_is_refused_naming_the_orientation(tmp_path,
                                                                            orientation):
    stored_label = np.zeros((10, 20))  # the stored image's 20x10, not the displayed 10x20
    name = f"t_io_exif_stored_{orientation}"
    _semantic_dataset(tmp_path, name, _exif_image(np.zeros((20, 10, 3), np.uint8), orientation),
                      stored_label, **_save_kwargs(orientation))
    # Before: accepted at registration, then refused by the mapper mid-training.
    with pytest.raises(DatasetValidationError,
                       match=rf"is 10x20 but its annotation .* is 20x10 .* EXIF orientation "
                             rf"{orientation}.*exif_transpose"):
        DatasetCatalog.get(name)


def test_square_exif_rotated_image_is_flagged(tmp_path, caplog):
    # Sizes cannot tell which orientation a square label was drawn in: say what is assumed.
    name = "t_io_exif_square"
    _semantic_dataset(tmp_path, name, _exif_image(np.zeros((12, 12, 3), np.uint8), 6),
                      np.zeros((12, 12)), **_save_kwargs(6))
    with caplog.at_level(logging.WARNING, logger="dataseg.data.catalog"):
        DatasetCatalog.get(name)
    assert "EXIF orientation 6" in caplog.text and "a.png" in caplog.text


def test_predictor_and_demo_read_16bit_images_as_training_does(tmp_path):
    import demo  # projects/demo, on the path through pytest.ini
    from dataseg.engine import DaTaSegPredictor, get_dataseg_cfg
    from helpers import TINY_CONFIG, TINY_OPTS

    assert demo.read_image is read_image  # the demo reads files as the mappers do
    predictor = DaTaSegPredictor(get_dataseg_cfg(TINY_CONFIG, TINY_OPTS + ["MODEL.WEIGHTS", ""]),
                                 classes=["dark", "bright"], task="semantic")
    seen = []
    predictor.model.register_forward_pre_hook(
        lambda m, args: seen.append(args[0][0]["image"].clone()))
    values = np.stack([_gray16(16, 16)] * 3, axis=-1)
    predictor(values)  # an array of 16-bit values (cv2.IMREAD_UNCHANGED, tifffile, ...)
    predictor((values >> 8).astype(np.uint8))
    assert seen[0].dtype == seen[1].dtype == torch.uint8
    assert torch.equal(seen[0], seen[1]) and seen[0].float().mean() == 108.0
