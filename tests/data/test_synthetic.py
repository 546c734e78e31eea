"""Generated datasets: deterministic, real formats, loadable by detectron2's loaders."""

import filecmp
import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json

from dataseg.data.synthetic import generate_synthetic_datasets, main


def test_deterministic(tmp_path):
    a = generate_synthetic_datasets(str(tmp_path / "a"), num_train=2, num_val=1, image_size=32)
    b = generate_synthetic_datasets(str(tmp_path / "b"), num_train=2, num_val=1, image_size=32)
    for rel in ("panoptic/panoptic_train.json", "panoptic/panoptic_train/000001.png",
                "semantic/annotations_detectron2/training/synth_training_000001.png",
                "box/annotations/instances_val.json"):
        assert filecmp.cmp(os.path.join(a, rel), os.path.join(b, rel), shallow=False), rel
    c = generate_synthetic_datasets(str(tmp_path / "c"), num_train=2, num_val=1, image_size=32,
                                    seed=1)
    assert not filecmp.cmp(os.path.join(a, "panoptic/panoptic_train/000001.png"),
                           os.path.join(c, "panoptic/panoptic_train/000001.png"), shallow=False)


def test_cli(tmp_path, capsys):
    main(["--root", str(tmp_path), "--num-train", "1", "--num-val", "1", "--image-size", "32"])
    assert "written" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "panoptic" / "panoptic_val.json")


def test_loads_with_detectron2_loaders(synthetic_root, synthetic_datasets):
    pan = os.path.join(synthetic_root, "panoptic")
    meta = MetadataCatalog.get(synthetic_datasets["panoptic_train"]).as_dict()
    dicts = load_coco_panoptic_json(os.path.join(pan, "panoptic_train.json"),
                                    os.path.join(pan, "images", "train"),
                                    os.path.join(pan, "panoptic_train"), meta)
    assert len(dicts) == 6 and all(d["segments_info"] for d in dicts)
    sem = os.path.join(synthetic_root, "semantic")
    assert len(load_sem_seg(os.path.join(sem, "annotations_detectron2", "training"),
                            os.path.join(sem, "images", "training"))) == 6
    coco = load_coco_json(os.path.join(synthetic_root, "box", "annotations", "instances_val.json"),
                          os.path.join(synthetic_root, "box", "images", "val"))
    assert len(coco) == 4 and all("segmentation" in a for d in coco for a in d["annotations"])
    with open(os.path.join(synthetic_root, "box", "annotations", "boxes_train.json")) as f:
        assert all("segmentation" not in a for a in json.load(f)["annotations"])
    for name in synthetic_datasets.values():
        assert len(DatasetCatalog.get(name)) in (4, 6)
