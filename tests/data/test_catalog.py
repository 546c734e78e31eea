"""Dataset registration helpers: metadata contract and lazy, clear validation."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from dataseg.data import (
    TASKS,
    DatasetValidationError,
    check_task,
    get_dataset_task,
    register_box_dataset,
    register_instance_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)
from dataseg.data.catalog import class_names_to_vocabulary

REQUIRED_KEYS = ("dataseg_task", "dataseg_classes", "dataseg_isthing", "dataseg_test_outputs",
                 "evaluator_type")


def test_unknown_task_lists_valid_tasks():
    with pytest.raises(ValueError) as e:
        check_task("detection")
    for task in TASKS:
        assert task in str(e.value)


def test_vocabulary_normalisation():
    # Commas are synonyms; a "/" is part of the name (it once split "AC/DC" into 2 synonyms).
    assert class_names_to_vocabulary(["AC/DC", "window ", "tv,monitor", "Cabinet/shelf"]) == [
        "AC/DC", "window", "tv, monitor", "Cabinet/shelf"]


def test_slash_names_stay_one_class_and_objects365_keeps_its_synonyms(tmp_path):
    register_semantic_dataset("t_cat_slash", str(tmp_path), str(tmp_path), ["AC/DC", "rock"],
                              replace=True)
    assert MetadataCatalog.get("t_cat_slash").dataseg_classes == ["AC/DC", "rock"]
    register_box_dataset("t_cat_slash_box", str(tmp_path / "late.json"), str(tmp_path),
                         class_names=["AC/DC", "rock"], replace=True)
    assert MetadataCatalog.get("t_cat_slash_box").dataseg_classes == ["AC/DC", "rock"]
    # The builtin Objects365 names "a/b" alternatives: registered as explicit synonyms.
    o365 = MetadataCatalog.get("dataseg_objects365_v2_val")
    assert o365.thing_classes[12] == "Cabinet/shelf"
    assert o365.dataseg_classes[12] == "Cabinet, shelf"


@pytest.mark.parametrize("short,task", [
    ("panoptic_train", "panoptic"), ("semantic_val", "semantic"), ("instance_train", "instance"),
    ("box_train", "box"), ("box_val", "box"), ("heldout_panoptic_val", "panoptic"),
])
def test_synthetic_metadata_contract(synthetic_datasets, short, task):
    name = synthetic_datasets[short]
    meta = MetadataCatalog.get(name)
    for key in REQUIRED_KEYS:
        assert meta.get(key, None) is not None, key
    assert get_dataset_task(name) == task
    assert len(meta.dataseg_isthing) == len(meta.dataseg_classes)
    if task == "panoptic":
        assert meta.stuff_classes == meta.thing_classes and len(meta.stuff_classes) == 7
        contiguous = set(meta.thing_dataset_id_to_contiguous_id.values())
        assert contiguous <= set(range(len(meta.stuff_classes)))
        assert [meta.dataseg_isthing[i] for i in sorted(contiguous)] == [True] * 3
        assert meta.dataseg_test_outputs == ("panoptic_seg",)
    if task in ("instance", "box"):
        assert all(meta.dataseg_isthing)
        assert meta.dataseg_test_outputs == ("instances",)
    if short == "box_val":
        assert meta.coco_eval_tasks == ("bbox", "segm")


def test_datasets_name_shared_concepts_differently(synthetic_datasets):
    vocab = {k: MetadataCatalog.get(v).dataseg_classes for k, v in synthetic_datasets.items()}
    assert "disk" in vocab["panoptic_train"] and "circle" in vocab["heldout_panoptic_val"]
    assert "disk" not in vocab["heldout_panoptic_val"]
    assert set(vocab["semantic_train"]).isdisjoint(vocab["panoptic_train"])


def test_registration_without_files_then_clear_error(tmp_path):
    missing = str(tmp_path / "nowhere")
    register_semantic_dataset("t_cat_missing_sem", os.path.join(missing, "img"),
                              os.path.join(missing, "lab"), ["a", "b"], replace=True)
    register_panoptic_dataset("t_cat_missing_pan", missing, missing, missing + ".json",
                              categories=[{"id": 1, "name": "a", "isthing": 1}], replace=True)
    register_instance_dataset("t_cat_missing_ins", missing + ".json", missing,
                              class_names=["a"], replace=True)
    register_box_dataset("t_cat_missing_box", missing + ".json", missing, class_names=["a"],
                         replace=True)
    for name in ("t_cat_missing_sem", "t_cat_missing_pan", "t_cat_missing_ins",
                 "t_cat_missing_box"):
        with pytest.raises(FileNotFoundError, match="expected path"):
            DatasetCatalog.get(name)
    with pytest.raises(FileNotFoundError, match=os.path.join("nowhere", "img")):
        DatasetCatalog.get("t_cat_missing_sem")


def _semantic_fixture(tmp_path, label, image_size=(16, 16)):
    img_dir, lab_dir = tmp_path / "img", tmp_path / "lab"
    img_dir.mkdir()
    lab_dir.mkdir()
    Image.fromarray(np.zeros(image_size + (3,), np.uint8)).save(img_dir / "a.jpg")
    Image.fromarray(label.astype(np.uint8)).save(lab_dir / "a.png")
    return str(img_dir), str(lab_dir)


def test_semantic_class_id_outside_list(tmp_path):
    img, lab = _semantic_fixture(tmp_path, np.full((16, 16), 7))
    register_semantic_dataset("t_cat_bad_ids", img, lab, ["a", "b", "c"], replace=True)
    with pytest.raises(DatasetValidationError, match=r"\[7\]"):
        DatasetCatalog.get("t_cat_bad_ids")


def test_semantic_size_mismatch(tmp_path):
    img, lab = _semantic_fixture(tmp_path, np.zeros((8, 8)))
    register_semantic_dataset("t_cat_bad_size", img, lab, ["a"], replace=True)
    with pytest.raises(DatasetValidationError, match="same size"):
        DatasetCatalog.get("t_cat_bad_size")


def test_semantic_empty(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    register_semantic_dataset("t_cat_empty", str(tmp_path / "img"), str(tmp_path / "lab"), ["a"],
                              replace=True)
    with pytest.raises(DatasetValidationError, match="empty"):
        DatasetCatalog.get("t_cat_empty")


def test_panoptic_unknown_category(tmp_path, synthetic_root):
    pan = os.path.join(synthetic_root, "panoptic")
    with open(os.path.join(pan, "panoptic_val.json")) as f:
        info = json.load(f)
    info["annotations"][0]["segments_info"][0]["category_id"] = 999
    bad_json = tmp_path / "bad.json"
    bad_json.write_text(json.dumps(info))
    register_panoptic_dataset("t_cat_bad_pan", os.path.join(pan, "images", "val"),
                              os.path.join(pan, "panoptic_val"), str(bad_json),
                              categories=info["categories"], replace=True)
    with pytest.raises(DatasetValidationError, match="999"):
        DatasetCatalog.get("t_cat_bad_pan")


def test_panoptic_categories_deferred_to_load(tmp_path, synthetic_root):
    pan = os.path.join(synthetic_root, "panoptic")
    # categories=None and the json exists: read at registration.
    register_panoptic_dataset("t_cat_pan_json", os.path.join(pan, "images", "val"),
                              os.path.join(pan, "panoptic_val"),
                              os.path.join(pan, "panoptic_val.json"), replace=True)
    meta = MetadataCatalog.get("t_cat_pan_json")
    assert meta.dataseg_classes[0] == "disk" and meta.dataseg_task == "panoptic"
    assert len(DatasetCatalog.get("t_cat_pan_json")) == 4


def test_coco_unknown_category(tmp_path, synthetic_root):
    src = os.path.join(synthetic_root, "box", "annotations", "instances_val.json")
    with open(src) as f:
        info = json.load(f)
    info["annotations"][0]["category_id"] = 42
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(info))
    register_instance_dataset("t_cat_bad_coco", str(bad),
                              os.path.join(synthetic_root, "box", "images", "val"), replace=True)
    with pytest.raises(DatasetValidationError, match="42"):
        DatasetCatalog.get("t_cat_bad_coco")

    del info["annotations"][0]["category_id"]
    bad.write_text(json.dumps(info))
    with pytest.raises(DatasetValidationError, match="an annotation without a category_id"):
        DatasetCatalog.get("t_cat_bad_coco")


def test_box_dataset_drops_masks_for_training(synthetic_datasets):
    dicts = DatasetCatalog.get(synthetic_datasets["box_train"])
    assert all("segmentation" not in a for d in dicts for a in d["annotations"])
    held_out = DatasetCatalog.get(synthetic_datasets["box_val"])
    assert any("segmentation" in a for d in held_out for a in d["annotations"])


def _relabelled_coco(tmp_path, synthetic_root, new_ids, names=None, first_id=None):
    """The synthetic box val json with its 3 categories renumbered (and renamed)."""
    src = os.path.join(synthetic_root, "box", "annotations", "instances_val.json")
    with open(src) as f:
        info = json.load(f)
    old = sorted(c["id"] for c in info["categories"])
    remap = dict(zip(old, new_ids))
    for c in info["categories"]:
        c["id"] = remap[c["id"]]
        if names:
            c["name"] = names[old.index(next(k for k, v in remap.items() if v == c["id"]))]
    for a in info["annotations"]:
        a["category_id"] = remap[a["category_id"]]
    if first_id is not None:
        info["categories"].append({"id": first_id, "name": "_background_"})
    path = tmp_path / f"relabelled_{'_'.join(map(str, new_ids))}.json"
    path.write_text(json.dumps(info))
    return str(path), info


def _labels_by_name(name):
    """category name of every loaded annotation, through the REGISTERED vocabulary."""
    dicts = DatasetCatalog.get(name)  # first: a late json sets the vocabulary when loaded
    classes = MetadataCatalog.get(name).dataseg_classes
    return [classes[a["category_id"]] for d in dicts for a in d["annotations"]]


def _labels_in_json(info):
    names = {c["id"]: c["name"] for c in info["categories"]}
    return sorted(names[a["category_id"]] for a in info["annotations"])


@pytest.mark.parametrize("late", [False, True], ids=["json-at-registration", "json-later"])
def test_coco_ids_come_from_the_json(tmp_path, synthetic_root, late):
    # labelme's export: ids from 0 with a "_background_" category; and ids with gaps.
    images = os.path.join(synthetic_root, "box", "images", "val")
    for new_ids, first in (((1, 2, 3), 0), ((1, 3, 4), None), ((7, 72, 90), None)):
        path, info = _relabelled_coco(tmp_path, synthetic_root, new_ids, first_id=first)
        name = f"t_cat_ids_{late}_{'_'.join(map(str, new_ids))}"
        real = path
        if late:  # registered before the file exists (as the builtin datasets are)
            path = str(tmp_path / f"late_{name}.json")
        register_box_dataset(name, path, images, replace=True)
        if late:
            os.replace(real, path)
        assert sorted(_labels_by_name(name)) == _labels_in_json(info)
        expected = sorted(info["categories"], key=lambda c: c["id"])
        if not late:
            assert MetadataCatalog.get(name).dataseg_classes == [c["name"] for c in expected]
            assert MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id == {
                c["id"]: i for i, c in enumerate(expected)}


def test_coco_class_names_without_ids_take_the_json_ids(tmp_path, synthetic_root):
    path, info = _relabelled_coco(tmp_path, synthetic_root, (1, 3, 4))
    names = [c["name"] for c in sorted(info["categories"], key=lambda c: c["id"])]
    register_box_dataset("t_cat_names_json_ids", path,
                         os.path.join(synthetic_root, "box", "images", "val"),
                         class_names=names, replace=True)
    assert sorted(_labels_by_name("t_cat_names_json_ids")) == _labels_in_json(info)


def test_coco_ids_that_disagree_with_the_json_fail_naming_both(tmp_path, synthetic_root):
    path, info = _relabelled_coco(tmp_path, synthetic_root, (1, 3, 4))
    images = os.path.join(synthetic_root, "box", "images", "val")
    names = ["ball", "crate", "pyramid"]
    with pytest.raises(DatasetValidationError, match=r"\[1, 2, 3\].*\[1, 3, 4\]"):
        register_box_dataset("t_cat_wrong_ids", path, images, class_names=names,
                             category_ids=[1, 2, 3], replace=True)
    with pytest.raises(ValueError, match="2 class_names but .* has 3 categories"):
        register_box_dataset("t_cat_wrong_count", path, images, class_names=names[:2],
                             replace=True)
    # Registered before the json exists: names without ids are matched with the json's
    # categories when it is loaded (as at registration); wrong explicit ids fail naming both.
    late = str(tmp_path / "late_wrong.json")
    register_box_dataset("t_cat_late_names", late, images, class_names=names, replace=True)
    register_box_dataset("t_cat_late_wrong", late, images, class_names=names,
                         category_ids=[1, 2, 3], replace=True)
    os.replace(path, late)
    assert sorted(_labels_by_name("t_cat_late_names")) == _labels_in_json(info)
    with pytest.raises(DatasetValidationError, match=r"\[1, 2, 3\].*\[1, 3, 4\]"):
        DatasetCatalog.get("t_cat_late_wrong")
