"""Loading a dataset checks what would otherwise move a number silently: repeated image ids,
class names matched to the wrong json category, image files missing past the sampled ones,
image extensions the listing does not expect."""

import copy
import json
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from dataseg.data import (
    DatasetValidationError,
    register_box_dataset,
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)
from dataseg.data.columnar import ColumnarDatasetDicts

# Listed out of id order, as labelme / CVAT exports and hand-edited jsons do.
CATEGORIES = [{"id": 90, "name": "pyramid"}, {"id": 7, "name": "ball"},
              {"id": 72, "name": "crate"}]


def _coco(tmp_path, num_images=3, categories=CATEGORIES, images=None):
    """A COCO json whose image k holds one box of category ``categories[k % 3]``; image files
    are empty (loading checks that they exist, not their content)."""
    image_root = tmp_path / "images"
    image_root.mkdir(parents=True, exist_ok=True)
    images = images or [{"id": k + 1, "file_name": f"{k:03d}.jpg", "height": 8, "width": 8}
                        for k in range(num_images)]
    annotations = [{"id": k + 1, "image_id": img["id"], "bbox": [1, 1, 3, 3], "iscrowd": 0,
                    "area": 9, "category_id": categories[k % len(categories)]["id"]}
                   for k, img in enumerate(images)]
    for img in images:
        (image_root / img["file_name"]).write_bytes(b"")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))
    return str(path), str(image_root)


def _register(name, json_file, image_root, columnar, **kwargs):
    if columnar is None:  # the instance loader (masks kept): the json path
        register_instance_dataset(name, json_file, image_root, replace=True, **kwargs)
    else:
        register_box_dataset(name, json_file, image_root, columnar_cache=columnar,
                             columnar_cache_dir=os.path.join(os.path.dirname(json_file), "cache"),
                             replace=True, **kwargs)


LOADERS = pytest.mark.parametrize("columnar", [None, False, True],
                                  ids=["instance-json", "box-json", "box-columnar"])


def _loaded_names(name):
    dicts = DatasetCatalog.get(name)
    classes = MetadataCatalog.get(name).thing_classes
    return {os.path.basename(d["file_name"]): [classes[a["category_id"]] for a in d["annotations"]]
            for d in dicts}


def _json_names(json_file):
    with open(json_file) as f:
        info = json.load(f)
    names = {c["id"]: c["name"] for c in info["categories"]}
    files = {img["id"]: img["file_name"] for img in info["images"]}
    out = {}
    for a in info["annotations"]:
        out.setdefault(files[a["image_id"]], []).append(names[a["category_id"]])
    return out


# ---- repeated image ids ------------------------------------------------------------------
@LOADERS
def test_coco_repeated_image_id_is_refused_naming_the_files(tmp_path, columnar):
    images = [{"id": 1, "file_name": "a.jpg", "height": 8, "width": 8},
              {"id": 2, "file_name": "b.jpg", "height": 8, "width": 8},
              {"id": 1, "file_name": "c.jpg", "height": 8, "width": 8}]
    json_file, image_root = _coco(tmp_path, images=images)
    name = f"t_integ_dup_{columnar}"
    _register(name, json_file, image_root, columnar)
    # Before: c.jpg vanished and its box was drawn on a.jpg (or the reverse).
    with pytest.raises(DatasetValidationError,
                       match=r"instances\.json.*image id 1 to 2 images \['a\.jpg', 'c\.jpg'\]"):
        DatasetCatalog.get(name)


def test_repeated_image_id_found_by_the_large_json_scan(tmp_path, monkeypatch):
    # Large jsons: the images list is found without parsing the annotations.
    from dataseg.data import catalog
    from dataseg.data.json_stream import read_coco_list

    images = [{"id": 5, "file_name": "a.jpg", "height": 8, "width": 8},
              {"id": 5, "file_name": "b.jpg", "height": 8, "width": 8}]
    json_file, image_root = _coco(tmp_path, images=images)
    assert read_coco_list(json_file, "images", window=16) == images
    monkeypatch.setattr(catalog, "_CATEGORIES_SCAN_BYTES", 0)
    register_instance_dataset("t_integ_dup_scan", json_file, image_root, replace=True)
    with pytest.raises(DatasetValidationError, match=r"image id 5 to 2 images"):
        DatasetCatalog.get("t_integ_dup_scan")


def _panoptic(tmp_path, num_images, size=8):
    """A panoptic json of ``num_images`` images whose PNGs are all void (no segment)."""
    img_dir, png_dir = tmp_path / "images", tmp_path / "panoptic"
    img_dir.mkdir()
    png_dir.mkdir()
    images, annotations = [], []
    for k in range(num_images):
        Image.fromarray(np.full((size, size, 3), 9 * k, np.uint8)).save(img_dir / f"{k:03d}.jpg")
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(png_dir / f"{k:03d}.png")
        images.append({"id": k, "file_name": f"{k:03d}.jpg", "height": size, "width": size})
        annotations.append({"image_id": k, "file_name": f"{k:03d}.png", "segments_info": []})
    info = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "ball", "isthing": 1},
                           {"id": 2, "name": "sky", "isthing": 0}]}
    return info, str(img_dir), str(png_dir)


def _register_panoptic(tmp_path, name, info, img_dir, png_dir):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(info))
    register_panoptic_dataset(name, img_dir, png_dir, str(path), replace=True)
    return str(path)


def test_panoptic_repeated_image_id_is_refused(tmp_path):
    info, img_dir, png_dir = _panoptic(tmp_path, 3)
    _register_panoptic(tmp_path, "t_integ_pan_ok", info, img_dir, png_dir)
    assert len(DatasetCatalog.get("t_integ_pan_ok")) == 3
    bad = copy.deepcopy(info)
    bad["images"][2]["id"] = 0  # images 000.jpg and 002.jpg share id 0
    _register_panoptic(tmp_path, "t_integ_pan_dup_images", bad, img_dir, png_dir)
    with pytest.raises(DatasetValidationError,
                       match=r"t_integ_pan_dup_images\.json.*image id 0 to 2 images "
                             r"\['000\.jpg', '002\.jpg'\]"):
        DatasetCatalog.get("t_integ_pan_dup_images")
    # Two PNGs for one photo: 002.png would be paired with 000.jpg.
    bad = copy.deepcopy(info)
    bad["annotations"][2]["image_id"] = 0
    _register_panoptic(tmp_path, "t_integ_pan_dup_pngs", bad, img_dir, png_dir)
    with pytest.raises(DatasetValidationError,
                       match=r"2 annotations for image id 0 \(panoptic PNGs "
                             r"\['000\.png', '002\.png'\]\)"):
        DatasetCatalog.get("t_integ_pan_dup_pngs")


# ---- class names given in the json's listing order ----------------------------------------
@LOADERS
@pytest.mark.parametrize("late", [False, True], ids=["json-at-registration", "json-later"])
def test_class_names_in_the_jsons_listing_order_label_correctly(tmp_path, columnar, late):
    json_file, image_root = _coco(tmp_path, num_images=6)
    name = f"t_integ_order_{columnar}_{late}"
    path = str(tmp_path / "late.json") if late else json_file
    listed = [c["name"] for c in CATEGORIES]  # pyramid (90), ball (7), crate (72)
    _register(name, path, image_root, columnar, class_names=listed)
    if late:
        os.replace(json_file, path)
    assert MetadataCatalog.get(name).dataseg_classes == listed
    # Before: the names took the json's ids sorted (7, 72, 90): every box mislabelled.
    assert _loaded_names(name) == _json_names(path)
    assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {90: 0, 7: 1, 72: 2}
    if columnar:
        assert isinstance(DatasetCatalog.get(name), ColumnarDatasetDicts)


def test_class_names_match_json_names_ignoring_case(tmp_path):
    json_file, image_root = _coco(tmp_path, num_images=3)
    register_box_dataset("t_integ_case", json_file, image_root,
                         class_names=["Crate", " BALL", "pyramid"], replace=True)
    assert MetadataCatalog.get("t_integ_case").thing_dataset_id_to_contiguous_id == {
        72: 0, 7: 1, 90: 2}


def test_ambiguous_class_names_ask_for_category_ids(tmp_path):
    json_file, image_root = _coco(tmp_path, num_images=3)
    # Other words than the json's, and the json does not list its categories by id.
    with pytest.raises(DatasetValidationError,
                       match=r"cannot tell which category.*instances\.json.*\[90, 7, 72\].*"
                             r"Pass category_ids="):
        register_box_dataset("t_integ_ambiguous", json_file, image_root,
                             class_names=["cone", "sphere", "box"], replace=True)
    # Listed by id, names that are other categories' names: position would swap them.
    sorted_cats = sorted(CATEGORIES, key=lambda c: c["id"])  # ball, crate, pyramid
    json_file, image_root = _coco(tmp_path / "sorted", categories=sorted_cats)
    with pytest.raises(DatasetValidationError, match=r"'crate' is the json's category \[72\]"):
        register_box_dataset("t_integ_clash", json_file, image_root,
                             class_names=["crate", "ball", "cone"], replace=True)
    # Other words, json listed by id: read in id order (the documented default).
    register_box_dataset("t_integ_positional", json_file, image_root,
                         class_names=["sphere", "box", "cone"], replace=True)
    assert MetadataCatalog.get("t_integ_positional").thing_dataset_id_to_contiguous_id == {
        7: 0, 72: 1, 90: 2}
    # Explicit ids always win.
    json_file, image_root = _coco(tmp_path, num_images=3)
    register_box_dataset("t_integ_explicit", json_file, image_root,
                         class_names=["cone", "sphere", "box"], category_ids=[90, 7, 72],
                         replace=True)
    assert MetadataCatalog.get("t_integ_explicit").thing_dataset_id_to_contiguous_id == {
        90: 0, 7: 1, 72: 2}


# ---- every image file is looked up -------------------------------------------------------
@LOADERS
def test_missing_tenth_coco_image_fails_at_load(tmp_path, columnar):
    json_file, image_root = _coco(tmp_path, num_images=12)
    os.remove(os.path.join(image_root, "009.jpg"))
    name = f"t_integ_missing_{columnar}"
    _register(name, json_file, image_root, columnar)
    with pytest.raises(DatasetValidationError,
                       match=r"1 of its 12 image files are missing: '.*009\.jpg'\. Restore"):
        DatasetCatalog.get(name)


def test_missing_tenth_panoptic_image_or_png_fails_at_load(tmp_path):
    info, img_dir, png_dir = _panoptic(tmp_path, 12)
    _register_panoptic(tmp_path, "t_integ_pan_missing", info, img_dir, png_dir)
    assert len(DatasetCatalog.get("t_integ_pan_missing")) == 12
    os.remove(os.path.join(img_dir, "009.jpg"))
    os.remove(os.path.join(png_dir, "010.png"))
    with pytest.raises(DatasetValidationError, match=r"1 of its 12 image files.*009\.jpg"):
        DatasetCatalog.get("t_integ_pan_missing")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(img_dir, "009.jpg"))
    with pytest.raises(DatasetValidationError, match=r"1 of its 12 panoptic PNG files.*010\.png"):
        DatasetCatalog.get("t_integ_pan_missing")


# ---- semantic image extensions -----------------------------------------------------------
def _semantic_folder(tmp_path, image_names, label_names):
    img_dir, lab_dir = tmp_path / "img", tmp_path / "lab"
    img_dir.mkdir()
    lab_dir.mkdir()
    for k, f in enumerate(image_names):
        # JPEG is lossy: a constant value per image survives it (identifies the pairing).
        Image.fromarray(np.full((8, 8, 3), 20 * k, np.uint8)).save(img_dir / f, format="JPEG")
    for k, f in enumerate(label_names):
        Image.fromarray(np.full((8, 8), k % 2, np.uint8)).save(lab_dir / f)
    return str(img_dir), str(lab_dir)


def test_semantic_images_with_any_jpeg_extension_are_kept(tmp_path):
    endings = [".jpg", ".JPG", ".jpeg", ".JPEG"]
    images = [f"im{k:02d}{endings[k % 4]}" for k in range(12)]
    img_dir, lab_dir = _semantic_folder(tmp_path, images, [f"im{k:02d}.png" for k in range(12)])
    register_semantic_dataset("t_integ_ext", img_dir, lab_dir, ["a", "b"], replace=True)
    dicts = DatasetCatalog.get("t_integ_ext")
    # Before: only the 3 ".jpg" images were kept, with detectron2's count warning.
    assert [os.path.basename(d["file_name"]) for d in dicts] == images
    assert [os.path.basename(d["sem_seg_file_name"]) for d in dicts] == [
        f"im{k:02d}.png" for k in range(12)]


def test_semantic_label_without_its_image_is_named(tmp_path):
    img_dir, lab_dir = _semantic_folder(tmp_path, ["a.jpg", "b.jpg"],
                                        ["a.png", "b.png", "c.png"])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.path.join(img_dir, "c.bmp"))
    register_semantic_dataset("t_integ_unmatched", img_dir, lab_dir, ["a", "b"], replace=True)
    # Before: c.png was dropped with detectron2's count warning.
    with pytest.raises(DatasetValidationError,
                       match=r"1 of 3 label maps have no image.*\['jpg', 'jpeg'\].*c\.png.*"
                             r"image_ext="):
        DatasetCatalog.get("t_integ_unmatched")


def test_semantic_image_named_twice_is_refused(tmp_path):
    img_dir, lab_dir = _semantic_folder(tmp_path, ["a.jpg", "a.JPEG"], ["a.png"])
    register_semantic_dataset("t_integ_twice", img_dir, lab_dir, ["a", "b"], replace=True)
    with pytest.raises(DatasetValidationError, match=r"a\.JPEG.*a\.jpg.*same name 'a'"):
        DatasetCatalog.get("t_integ_twice")
