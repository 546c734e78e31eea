"""Bad input fails with an actionable message BEFORE the first training iteration.

Each case corrupts a private copy of the generated datasets, points a tiny training config at
it and builds ``DaTaSegTrainer``: the error must come from the constructor (pre-flight), not
from a step.
"""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

from dataseg.data import (
    DatasetValidationError,
    register_box_dataset,
    register_panoptic_dataset,
    register_semantic_dataset,
)
from dataseg.engine import DaTaSegTrainer
from dataseg.text import TextEncoderUnavailableError

from helpers import trainer_cfg

def _copy(synthetic_root, tmp_path, sub):
    dst = tmp_path / sub
    shutil.copytree(os.path.join(synthetic_root, sub), dst)
    return str(dst)


def _register_panoptic(name, root, json_name="panoptic_train.json"):
    with open(os.path.join(root, "panoptic_train.json")) as f:
        categories = json.load(f)["categories"]
    register_panoptic_dataset(name, os.path.join(root, "images", "train"),
                              os.path.join(root, "panoptic_train"), os.path.join(root, json_name),
                              categories=categories, replace=True)


def _trainer_fails(tmp_path, name, exc, match):
    with pytest.raises(exc, match=match):
        DaTaSegTrainer(trainer_cfg(tmp_path / "out", [name]))


# ---- files ---------------------------------------------------------------------------
def test_missing_folder(tmp_path, synthetic_root):
    root = _copy(synthetic_root, tmp_path, "panoptic")
    _register_panoptic("rel_missing_folder", root)
    shutil.rmtree(os.path.join(root, "panoptic_train"))
    _trainer_fails(tmp_path, "rel_missing_folder", FileNotFoundError,
                   r"panoptic PNG folder not found at expected path .*panoptic_train")


def test_missing_annotation_file(tmp_path, synthetic_root):
    root = _copy(synthetic_root, tmp_path, "panoptic")
    _register_panoptic("rel_missing_json", root, json_name="nope.json")
    _trainer_fails(tmp_path, "rel_missing_json", FileNotFoundError,
                   r"panoptic json file not found at expected path .*nope\.json")


def test_json_that_does_not_parse(tmp_path, synthetic_root):
    root = _copy(synthetic_root, tmp_path, "panoptic")
    path = os.path.join(root, "panoptic_train.json")
    _register_panoptic("rel_bad_json", root)
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])  # a half-downloaded file
    _trainer_fails(tmp_path, "rel_bad_json", DatasetValidationError,
                   r"is not valid JSON .*truncated or was only partly downloaded")
    # Registration that reads categories from the json says the same.
    with pytest.raises(DatasetValidationError, match="not valid JSON"):
        register_panoptic_dataset("rel_bad_json2", root, root, path, replace=True)


def test_coco_json_that_does_not_parse(tmp_path, synthetic_root, synthetic_datasets):
    root = _copy(synthetic_root, tmp_path, "box")
    path = os.path.join(root, "annotations", "instances_train.json")
    names = MetadataCatalog.get(synthetic_datasets["box_train"]).thing_classes
    register_box_dataset("rel_bad_coco_json", path, os.path.join(root, "images", "train"),
                         class_names=names, replace=True)
    with open(path, "w") as f:
        f.write('{"images": [')
    _trainer_fails(tmp_path, "rel_bad_coco_json", DatasetValidationError, "not valid JSON")


def test_category_id_not_in_class_list(tmp_path, synthetic_root):
    root = _copy(synthetic_root, tmp_path, "box")
    path = os.path.join(root, "annotations", "instances_train.json")
    info = json.load(open(path))
    names = [c["name"] for c in sorted(info["categories"], key=lambda c: c["id"])]
    info["annotations"][0]["category_id"] = 4242
    json.dump(info, open(path, "w"))
    register_box_dataset("rel_bad_cat", path, os.path.join(root, "images", "train"),
                         class_names=names, replace=True)
    _trainer_fails(tmp_path, "rel_bad_cat", DatasetValidationError,
                   r"category_id is not among its categories .*category_id=4242")


def test_panoptic_png_ids_not_in_json(tmp_path, synthetic_root):
    root = _copy(synthetic_root, tmp_path, "panoptic")
    path = os.path.join(root, "panoptic_train.json")
    info = json.load(open(path))
    dropped = info["annotations"][0]["segments_info"].pop(0)
    json.dump(info, open(path, "w"))
    _register_panoptic("rel_pan_ids", root)
    _trainer_fails(tmp_path, "rel_pan_ids", DatasetValidationError,
                   rf"segment ids \[{dropped['id']}\] that are not in its json segments_info")


def test_panoptic_mapper_checks_every_image(tmp_path, synthetic_root):
    """Images beyond the validated sample are checked by the mapper as they are read."""
    from dataseg.data import PanopticDatasetMapper

    root = _copy(synthetic_root, tmp_path, "panoptic")
    _register_panoptic("rel_pan_ids_mapper", root)
    record = DatasetCatalog.get("rel_pan_ids_mapper")[0]
    record["segments_info"] = record["segments_info"][1:]
    mapper = PanopticDatasetMapper(True, dataset_name="rel_pan_ids_mapper", augmentations=[])
    with pytest.raises(DatasetValidationError, match="not in its json segments_info"):
        mapper(record)


def _semantic(tmp_path, name, label, image_hw=(16, 16)):
    img_dir, lab_dir = tmp_path / name / "img", tmp_path / name / "lab"
    img_dir.mkdir(parents=True)
    lab_dir.mkdir(parents=True)
    Image.fromarray(np.zeros(image_hw + (3,), np.uint8)).save(img_dir / "a.jpg")
    Image.fromarray(label.astype(np.uint8)).save(lab_dir / "a.png")
    register_semantic_dataset(name, str(img_dir), str(lab_dir), ["sky", "road", "tree"],
                              replace=True)


def test_semantic_labels_outside_vocabulary(tmp_path):
    label = np.zeros((16, 16))
    label[0, 0], label[1, 1] = 255, 9  # ignore is fine, 9 is not
    _semantic(tmp_path, "rel_sem_labels", label)
    _trainer_fails(tmp_path, "rel_sem_labels", DatasetValidationError,
                   r"class ids \[9\] outside the 3 registered classes \(0..2, ignore=255\)")


def test_image_and_mask_sizes_differ(tmp_path):
    _semantic(tmp_path, "rel_sem_size", np.zeros((8, 8)))
    _trainer_fails(tmp_path, "rel_sem_size", DatasetValidationError,
                   r"is 16x16 but its annotation .* is 8x8 \(WxH\)")


def _box_test_set(tmp_path, name, num_images, missing=(), repeated_id=False):
    """A COCO box test set of ``num_images`` images; ``missing`` file indices are deleted."""
    images_dir = tmp_path / name
    images_dir.mkdir()
    images = [{"id": k + 1, "file_name": f"{k:03d}.jpg", "height": 16, "width": 16}
              for k in range(num_images)]
    if repeated_id:
        images[-1]["id"] = 1
    for img in images:
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(images_dir / img["file_name"])
    for k in missing:
        os.remove(images_dir / f"{k:03d}.jpg")
    annotations = [{"id": k + 1, "image_id": img["id"], "category_id": 1, "bbox": [2, 2, 5, 5],
                    "area": 25, "iscrowd": 0} for k, img in enumerate(images)]
    json_file = tmp_path / f"{name}.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                     "categories": [{"id": 1, "name": "box"}]}))
    register_box_dataset(name, str(json_file), str(images_dir), replace=True)


def test_test_image_missing_past_the_sample_fails_before_training(tmp_path, synthetic_datasets):
    # The 10th of 12 test images is gone: before, only the first 8 were looked up and the run
    # failed in its final evaluation.
    _box_test_set(tmp_path, "rel_test_missing_10th", 12, missing=[9])
    with pytest.raises(DatasetValidationError,
                       match=r"'rel_test_missing_10th': 1 of its 12 image files are missing: "
                             r"'.*009\.jpg'"):
        DaTaSegTrainer(trainer_cfg(tmp_path / "out", [synthetic_datasets["semantic_train"]],
                                   test=["rel_test_missing_10th"]))


def test_repeated_image_id_in_a_test_set_fails_before_training(tmp_path, synthetic_datasets):
    _box_test_set(tmp_path, "rel_test_repeated_id", 3, repeated_id=True)
    with pytest.raises(DatasetValidationError,
                       match=r"image id 1 to 2 images \['000\.jpg', '002\.jpg'\]"):
        DaTaSegTrainer(trainer_cfg(tmp_path / "out", [synthetic_datasets["semantic_train"]],
                                   test=["rel_test_repeated_id"]))


# ---- metadata and config --------------------------------------------------------------
def _edit_metadata(name, **changes):
    """Replace metadata keys (detectron2 refuses to overwrite them in place)."""
    values = MetadataCatalog.get(name).as_dict()
    values.pop("name")
    values.update(changes)
    MetadataCatalog.remove(name)
    MetadataCatalog.get(name).set(**values)


def test_unknown_task_name(tmp_path):
    _semantic(tmp_path, "rel_bad_task", np.zeros((16, 16)))
    _edit_metadata("rel_bad_task", dataseg_task="detection")
    _trainer_fails(tmp_path, "rel_bad_task", ValueError,
                   r"Unknown DaTaSeg task 'detection'; valid tasks are \['panoptic', ")


def test_unregistered_training_dataset(tmp_path, synthetic_datasets):
    with pytest.raises(KeyError, match=r"not registered; did you mean \['pytest_synth_box_tr"):
        DaTaSegTrainer(trainer_cfg(tmp_path, ["pytest_synth_box_trian"]))


@pytest.mark.parametrize("ratios,match", [
    ([1.0, -0.5], r"must be finite and >= 0; got pytest_synth_semantic_train=-0.5"),
    ([0.0, 0.0], r"are all zero .* no dataset could ever be drawn"),
    ([1.0], r"has 1 entries but DATASETS.TRAIN has 2"),
])
def test_bad_sampling_ratios(tmp_path, synthetic_datasets, ratios, match):
    train = [synthetic_datasets["panoptic_train"], synthetic_datasets["semantic_train"]]
    # Caught when the config is read (train_net.py) ...
    with pytest.raises(ValueError, match=match):
        trainer_cfg(tmp_path, train, **{"DATALOADER.DATASEG.SAMPLING_RATIOS": ratios})
    # ... and by the trainer and the loader for configs built in code.
    cfg = trainer_cfg(tmp_path, train)
    cfg.defrost()
    cfg.DATALOADER.DATASEG.SAMPLING_RATIOS = ratios
    with pytest.raises(ValueError, match=match):
        DaTaSegTrainer(cfg)
    with pytest.raises(ValueError, match=match):
        DaTaSegTrainer.build_train_loader(cfg)


@pytest.mark.parametrize("classes,match", [
    ([], "class-name list is empty"),
    (["Sky", "road", " sky"], r"Duplicate class names after normalisation .*\['sky'\]"),
])
def test_bad_vocabulary(tmp_path, classes, match):
    name = f"rel_vocab_{len(classes)}"
    _semantic(tmp_path, name, np.zeros((16, 16)))
    # As if the class list had been edited by hand.
    _edit_metadata(name, dataseg_classes=classes, dataseg_isthing=[False] * len(classes))
    with pytest.raises(ValueError, match=rf"Training dataset '{name}': .*{match}"):
        DaTaSegTrainer(trainer_cfg(tmp_path / "out", [name]))


def test_text_encoder_weights_absent(tmp_path, synthetic_datasets):
    pytest.importorskip("open_clip")
    cfg = trainer_cfg(tmp_path, [synthetic_datasets["semantic_train"]], **{
        "MODEL.DATASEG.TEXT.ENCODER": "OpenCLIP", "MODEL.DATASEG.TEXT.OPENCLIP_MODEL": "RN50",
        "MODEL.DATASEG.TEXT.OPENCLIP_PRETRAINED": str(tmp_path / "missing" / "clip.pt")})
    with pytest.raises(TextEncoderUnavailableError, match=r"no such checkpoint[\s\S]*MiniLM"):
        DaTaSegTrainer(cfg)


def test_bad_test_dataset_found_before_training(tmp_path, synthetic_datasets):
    train = [synthetic_datasets["semantic_train"]]
    with pytest.raises(KeyError, match="Test dataset 'pytest_synth_semantic_vall'"):
        DaTaSegTrainer(trainer_cfg(tmp_path, train, test=["pytest_synth_semantic_vall"]))
    _semantic(tmp_path, "rel_test_vocab", np.zeros((16, 16)))
    _edit_metadata("rel_test_vocab", dataseg_classes=["sky", "Sky", "tree"])
    with pytest.raises(ValueError, match="Test dataset 'rel_test_vocab': Duplicate class names"):
        DaTaSegTrainer(trainer_cfg(tmp_path / "out", train, test=["rel_test_vocab"]))


def test_test_dataset_problems_found_before_training(tmp_path, synthetic_datasets, monkeypatch):
    train = [synthetic_datasets["semantic_train"]]
    # A dataset registered without DaTaSeg's helpers has no DaTaSeg metadata.
    DatasetCatalog.register("rel_test_plain_d2", lambda: [])
    MetadataCatalog.get("rel_test_plain_d2").set(evaluator_type="sem_seg", stuff_classes=["a"])
    with pytest.raises(KeyError, match=r"'rel_test_plain_d2' .* no DaTaSeg metadata"):
        DaTaSegTrainer(trainer_cfg(tmp_path, train, test=["rel_test_plain_d2"]))
    # detectron2's own names of the builtin benchmarks take their dataseg_ twin's metadata
    # (here the files are absent, so the check gets as far as loading them).
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        DaTaSegTrainer(trainer_cfg(tmp_path, train, test=["ade20k_sem_seg_val"]))
    meta = MetadataCatalog.get("ade20k_sem_seg_val")
    assert meta.dataseg_task == "semantic" and len(meta.dataseg_classes) == 150
    assert meta.dataseg_test_size == (512, 2048)
    # Files missing: the loader's own error, now instead of after training.
    register_semantic_dataset("rel_test_missing", str(tmp_path / "no_images"),
                              str(tmp_path / "no_labels"), ["sky", "tree"], replace=True)
    with pytest.raises(FileNotFoundError, match="rel_test_missing"):
        DaTaSegTrainer(trainer_cfg(tmp_path, train, test=["rel_test_missing"]))
    # The panoptic evaluator's package missing.
    import builtins

    real_import = builtins.__import__

    def no_panopticapi(name, *args, **kwargs):
        if name.startswith("panopticapi"):
            raise ImportError("No module named 'panopticapi'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_panopticapi)
    with pytest.raises(ImportError, match="needs the package 'panopticapi': pip install"):
        DaTaSegTrainer(trainer_cfg(tmp_path, train, test=[synthetic_datasets["panoptic_val"]]))
