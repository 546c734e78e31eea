"""Evaluator wiring: perfect predictions from ground truth score 100, empty/wrong ones 0."""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from dataseg.evaluation import EVALUATOR_REGISTRY, build_dataseg_evaluator


def _run(evaluator, dataset_name, predict):
    evaluator.reset()
    for d in DatasetCatalog.get(dataset_name):
        evaluator.process([d], [predict(d)])
    return evaluator.evaluate()


def _panoptic_gt(d):
    rgb = np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
                for s in d["segments_info"]]
    return torch.from_numpy(ids.astype(np.int32)), segments


@pytest.mark.parametrize("short", ["panoptic_val", "heldout_panoptic_val"])
def test_panoptic_pq(short, synthetic_datasets, tmp_path):
    name = synthetic_datasets[short]
    evaluator = build_dataseg_evaluator(None, name, str(tmp_path))
    perfect = _run(evaluator, name, lambda d: {"panoptic_seg": _panoptic_gt(d)})
    assert perfect["panoptic_seg"]["PQ"] == pytest.approx(100.0)
    empty = _run(evaluator, name, lambda d: {
        "panoptic_seg": (torch.zeros((d["height"], d["width"]), dtype=torch.int32), [])})
    assert empty["panoptic_seg"]["PQ"] == pytest.approx(0.0)


def _one_hot(labels, num_classes):
    scores = torch.zeros((num_classes,) + labels.shape)
    valid = labels < num_classes
    idx = torch.from_numpy(np.where(valid, labels, 0)).long()
    scores.scatter_(0, idx[None], torch.from_numpy(valid[None]).float())
    return scores


@pytest.mark.parametrize("short", ["semantic_val", "heldout_semantic_val"])
def test_semantic_miou(short, synthetic_datasets):
    name = synthetic_datasets[short]
    num = len(MetadataCatalog.get(name).stuff_classes)
    evaluator = build_dataseg_evaluator(None, name)

    def labels(d):
        return np.asarray(Image.open(d["sem_seg_file_name"])).astype(np.int64)

    perfect = _run(evaluator, name, lambda d: {"sem_seg": _one_hot(labels(d), num)})
    assert perfect["sem_seg"]["mIoU"] == pytest.approx(100.0)
    # An argmax always predicts some class, so "empty" = every pixel wrong.
    wrong = _run(evaluator, name, lambda d: {
        "sem_seg": _one_hot(np.where(labels(d) < num, (labels(d) + 1) % num, 255), num)})
    assert wrong["sem_seg"]["mIoU"] == pytest.approx(0.0)


def _instances_from_gt(d, empty=False):
    h, w = d["height"], d["width"]
    annos = [] if empty else d["annotations"]
    inst = Instances((h, w))
    inst.pred_boxes = Boxes(torch.tensor(
        [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos],
        dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.ones(len(annos))
    inst.pred_classes = torch.tensor([a["category_id"] for a in annos], dtype=torch.int64)
    masks = [mask_util.decode(a["segmentation"]) for a in annos]
    inst.pred_masks = torch.from_numpy(np.stack(masks).astype(bool)) if masks else \
        torch.zeros((0, h, w), dtype=torch.bool)
    return {"instances": inst}


@pytest.mark.parametrize("short,tasks", [("instance_val", ("segm", "bbox")),
                                         ("box_val", ("bbox", "segm"))])
def test_coco_ap(short, tasks, synthetic_datasets, tmp_path):
    name = synthetic_datasets[short]
    evaluator = build_dataseg_evaluator(None, name, str(tmp_path))
    assert evaluator._evaluators[0]._tasks == tasks
    perfect = _run(evaluator, name, _instances_from_gt)
    for task in tasks:
        assert perfect[task]["AP"] == pytest.approx(100.0), task
    empty = _run(evaluator, name, lambda d: _instances_from_gt(d, empty=True))
    for task in tasks:
        assert empty[task]["AP"] == 0.0, task


def test_box_training_set_evaluates_boxes_only(synthetic_datasets):
    evaluator = build_dataseg_evaluator(None, synthetic_datasets["box_train"])
    assert evaluator._evaluators[0]._tasks == ("bbox",)


def test_several_test_datasets_and_registry(synthetic_datasets, dataseg_cfg, tmp_path):
    dataseg_cfg.OUTPUT_DIR = str(tmp_path)
    kinds = set()
    for short in ("panoptic_val", "semantic_val", "instance_val", "box_val"):
        ev = build_dataseg_evaluator(dataseg_cfg, synthetic_datasets[short])
        kinds |= {type(e).__name__ for e in ev._evaluators}
    assert kinds == {"DaTaSegCOCOPanopticEvaluator", "SemSegEvaluator", "DaTaSegCOCOEvaluator"}
    assert {"coco_panoptic_seg", "sem_seg", "coco", "cityscapes_sem_seg"} <= set(
        EVALUATOR_REGISTRY)


def test_unknown_evaluator_type():
    MetadataCatalog.get("t_eval_unknown").evaluator_type = "nope"
    with pytest.raises(ValueError, match="registered types"):
        build_dataseg_evaluator(None, "t_eval_unknown")


def test_coco_perfect_predictions_score_100_on_labelme_style_json(synthetic_root, tmp_path):
    """Category ids from 0 (with "_background_"), non-contiguous ids, annotation ids from 0."""
    import json
    import os

    from dataseg.data import register_instance_dataset

    src = os.path.join(synthetic_root, "box", "annotations", "instances_val.json")
    with open(src) as f:
        info = json.load(f)
    remap = {c["id"]: new for c, new in zip(sorted(info["categories"], key=lambda c: c["id"]),
                                              (1, 5, 9))}
    for c in info["categories"]:
        c["id"] = remap[c["id"]]
    info["categories"].append({"id": 0, "name": "_background_"})
    for i, a in enumerate(info["annotations"]):
        a["category_id"] = remap[a["category_id"]]
        a["id"] = i  # from 0, as labelme writes them
    path = tmp_path / "labelme.json"
    path.write_text(json.dumps(info))
    name = "t_eval_labelme"
    register_instance_dataset(name, str(path), os.path.join(synthetic_root, "box", "images",
                                                            "val"), replace=True)
    evaluator = build_dataseg_evaluator(None, name, str(tmp_path / "eval"))
    perfect = _run(evaluator, name, _instances_from_gt)
    for task in ("segm", "bbox"):
        assert perfect[task]["AP"] == pytest.approx(100.0), task


def test_coco_wrong_area_fields_are_recomputed_with_a_warning(synthetic_root, tmp_path, caplog):
    """Areas of 0 / the box's / a 100x scale put objects in the wrong APs/APm/APl bucket."""
    import json
    import os

    from dataseg.data import register_instance_dataset

    src = os.path.join(synthetic_root, "box", "annotations", "instances_val.json")
    with open(src) as f:
        info = json.load(f)
    name = "t_eval_area"
    images = os.path.join(synthetic_root, "box", "images", "val")
    register_instance_dataset(name, src, images, replace=True)
    evaluator = build_dataseg_evaluator(None, name, str(tmp_path / "ok"))
    good = _run(evaluator, name, _instances_from_gt)
    for i, a in enumerate(info["annotations"]):
        a["area"] = (0, a["bbox"][2] * a["bbox"][3] * 1.5, a["area"] * 100)[i % 3]
    bad = tmp_path / "bad_area.json"
    bad.write_text(json.dumps(info))
    register_instance_dataset(name + "_bad", str(bad), images, replace=True)
    evaluator = build_dataseg_evaluator(None, name + "_bad", str(tmp_path / "bad"))
    fixed = _run(evaluator, name + "_bad", _instances_from_gt)
    assert "disagrees with their mask or box" in caplog.text
    for task in ("segm", "bbox"):
        for key in ("AP", "APs", "APm", "APl"):
            a, b = good[task][key], fixed[task][key]
            assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b), (task, key)
