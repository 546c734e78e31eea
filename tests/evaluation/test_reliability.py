"""Evaluation never reports an impossible number without saying so."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from dataseg.data import (build_dataseg_test_loader, register_instance_dataset,
                          register_semantic_dataset)
from dataseg.evaluation import NoPredictionsError, build_dataseg_evaluator


@pytest.mark.parametrize("short", ["semantic_val", "panoptic_val", "instance_val", "box_val"])
def test_evaluator_without_predictions_raises(short, synthetic_datasets, tmp_path):
    name = synthetic_datasets[short]
    evaluator = build_dataseg_evaluator(None, name, str(tmp_path))
    evaluator.reset()
    with pytest.raises(NoPredictionsError, match=rf"dataset '{name}' .* received no predictions"):
        evaluator.evaluate()


def test_test_dataset_with_zero_images(dataseg_cfg, synthetic_datasets):
    DatasetCatalog.register("rel_empty_test", lambda: [])
    MetadataCatalog.get("rel_empty_test").set(
        **{k: v for k, v in MetadataCatalog.get(synthetic_datasets["semantic_val"]).as_dict()
           .items() if k != "name"})
    with pytest.raises(ValueError, match="Test dataset 'rel_empty_test' has no images"):
        build_dataseg_test_loader(dataseg_cfg, "rel_empty_test")


def test_semantic_without_valid_ground_truth_warns(tmp_path, caplog):
    img, lab = tmp_path / "img", tmp_path / "lab"
    img.mkdir()
    lab.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img / "a.jpg")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(lab / "a.png")  # all ignore
    register_semantic_dataset("rel_all_ignore", str(img), str(lab), ["a", "b"], replace=True)
    evaluator = build_dataseg_evaluator(None, "rel_all_ignore")
    evaluator.reset()
    record = DatasetCatalog.get("rel_all_ignore")[0]
    evaluator.process([record], [{"sem_seg": torch.rand(2, 8, 8)}])
    with caplog.at_level(logging.WARNING, logger="dataseg.evaluation.checks"):
        results = evaluator.evaluate()
    assert np.isnan(results["sem_seg"]["mIoU"])
    assert any("'rel_all_ignore': sem_seg/mIoU is NaN" in r.message for r in caplog.records)


def test_coco_with_empty_predictions_is_zero_with_a_warning(synthetic_datasets, tmp_path,
                                                             caplog):
    name = synthetic_datasets["instance_val"]
    evaluator = build_dataseg_evaluator(None, name, str(tmp_path))
    evaluator.reset()
    for d in DatasetCatalog.get(name):
        empty = Instances((d["height"], d["width"]))
        empty.pred_boxes = Boxes(torch.zeros(0, 4))
        empty.scores = torch.zeros(0)
        empty.pred_classes = torch.zeros(0, dtype=torch.int64)
        empty.pred_masks = torch.zeros(0, d["height"], d["width"], dtype=torch.bool)
        evaluator.process([d], [{"instances": empty}])
    with caplog.at_level(logging.WARNING):
        results = evaluator.evaluate()
    assert results["segm"]["AP"] == 0.0
    assert any("predicted nothing on any image" in r.message for r in caplog.records)


def _ten_label_maps(tmp_path, name, bad_value=None, ext="png"):
    """10 images of 4x4: row 0 ignored, then class 0 on the left half, class 1 on the right.
    ``bad_value`` fills the right half of the LAST file (past the registration's sample)."""
    img, lab = tmp_path / "img", tmp_path / "lab"
    img.mkdir()
    lab.mkdir()
    dtype = np.int32 if ext == "tif" else np.uint8  # a 32-bit TIFF can hold negative ids
    for i in range(10):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(img / f"im{i:02d}.jpg")
        labels = np.full((4, 4), 255, dtype)
        labels[1:, :2], labels[1:, 2:] = 0, 1
        if i == 9 and bad_value is not None:
            labels[1:, 2:] = bad_value
        Image.fromarray(labels).save(lab / f"im{i:02d}.{ext}")
    register_semantic_dataset(name, str(img), str(lab), ["a", "b"], gt_ext=ext, replace=True)
    return DatasetCatalog.get(name)


def _scores(class_map):
    """(2, H, W) scores whose argmax is ``class_map``."""
    return torch.nn.functional.one_hot(torch.as_tensor(class_map).long(), 2).permute(2, 0, 1)\
        .float()


@pytest.mark.parametrize("bad_value,ext", [(2, "png"), (40, "png"), (-1, "tif")])
def test_bad_value_in_a_label_map_past_the_sample_stops_evaluation(tmp_path, bad_value, ext):
    records = _ten_label_maps(tmp_path, "rel_bad_label_value", bad_value, ext)
    assert len(records) == 10  # registration checks only a sample: the 10th file loads
    evaluator = build_dataseg_evaluator(None, "rel_bad_label_value")
    evaluator.reset()
    for record in records[:9]:
        evaluator.process([record], [{"sem_seg": _scores(np.zeros((4, 4)))}])
    bad_file = str(tmp_path / "lab" / f"im09.{ext}")
    with pytest.raises(ValueError) as error:
        evaluator.process([records[9]], [{"sem_seg": _scores(np.zeros((4, 4)))}])
    message = str(error.value)
    assert f"label map {bad_file!r}" in message and f"[{bad_value}]" in message
    assert "'rel_bad_label_value'" in message and "class ids 0..1 and 255" in message


def test_semantic_miou_of_ground_truth_and_of_a_known_wrong_prediction(tmp_path):
    records = _ten_label_maps(tmp_path, "rel_good_labels")
    evaluator = build_dataseg_evaluator(None, "rel_good_labels")

    def evaluate(last_all_zero):
        evaluator.reset()
        for i, record in enumerate(records):
            gt = np.asarray(Image.open(record["sem_seg_file_name"])).astype(np.int64)
            pred = np.where(gt == 255, 1 - i % 2, gt)  # any class on ignored pixels
            if last_all_zero and i == 9:
                pred = np.zeros_like(gt)
            evaluator.process([record], [{"sem_seg": _scores(pred)}])
        return evaluator.evaluate()["sem_seg"]

    assert evaluate(False)["mIoU"] == pytest.approx(100.0)
    # The 6 class-1 pixels of the last image predicted 0: IoU(0) = 60/66, IoU(1) = 54/60.
    wrong = evaluate(True)
    assert wrong["IoU-a"] == pytest.approx(100 * 60 / 66)
    assert wrong["IoU-b"] == pytest.approx(100 * 54 / 60)
    assert wrong["mIoU"] == pytest.approx(50 * (60 / 66 + 54 / 60))


def _empty_instances(h, w):
    empty = Instances((h, w))
    empty.pred_boxes = Boxes(torch.zeros(0, 4))
    empty.scores = torch.zeros(0)
    empty.pred_classes = torch.zeros(0, dtype=torch.int64)
    empty.pred_masks = torch.zeros(0, h, w, dtype=torch.bool)
    return empty


def _one_box(h, w):
    inst = Instances((h, w))
    inst.pred_boxes = Boxes(torch.tensor([[2.0, 2.0, 20.0, 20.0]]))
    inst.scores = torch.tensor([0.9])
    inst.pred_classes = torch.zeros(1, dtype=torch.int64)
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    masks[:, 2:20, 2:20] = True
    inst.pred_masks = masks
    return inst


@pytest.mark.parametrize("ground_truth", ["none", "crowd only"])
def test_coco_test_set_without_ground_truth_is_nan_not_zero(synthetic_datasets, tmp_path, caplog,
                                                             ground_truth):
    import json

    meta = MetadataCatalog.get(synthetic_datasets["instance_val"])
    with open(meta.json_file) as f:
        info = json.load(f)
    if ground_truth == "none":
        info["annotations"] = []
    for a in info["annotations"]:
        a["iscrowd"] = 1
    path = tmp_path / "no_gt.json"
    path.write_text(json.dumps(info))
    register_instance_dataset("rel_coco_no_gt", str(path), meta.image_root, replace=True)
    with caplog.at_level(logging.WARNING):
        evaluator = build_dataseg_evaluator(None, "rel_coco_no_gt", str(tmp_path / "out"))
    # Said when the evaluator is built, before the first image is evaluated.
    assert f"'rel_coco_no_gt': {str(path)!r} has" in caplog.text
    assert "no ground-truth object and its AP is NaN" in caplog.text
    for predict in (_empty_instances, _one_box):  # nothing, or a false positive per image
        evaluator.reset()
        for d in DatasetCatalog.get("rel_coco_no_gt"):
            evaluator.process([d], [{"instances": predict(d["height"], d["width"])}])
        results = evaluator.evaluate()
        for task in ("segm", "bbox"):
            assert np.isnan(results[task]["AP"]) and np.isnan(results[task]["AP50"]), predict


def _panoptic_copy(synthetic_datasets, tmp_path, name, kinds):
    """The synthetic panoptic val set with only the segments of thing (``1 in kinds``) and/or
    stuff (``0``) classes; the others become void (id 0) in copies of the PNGs. Categories of
    the other kind are dropped, unless ``kinds`` is empty (all void, every category kept)."""
    import json

    from dataseg.data import register_panoptic_dataset

    meta = MetadataCatalog.get(synthetic_datasets["panoptic_val"])
    with open(meta.panoptic_json) as f:
        info = json.load(f)
    isthing = {c["id"]: c["isthing"] for c in info["categories"]}
    out = tmp_path / "png"
    out.mkdir()
    for ann in info["annotations"]:
        rgb = np.asarray(Image.open(f"{meta.panoptic_root}/{ann['file_name']}").convert("RGB"))
        ids = rgb.astype(np.int64) @ np.array([1, 256, 65536])
        kept = [s for s in ann["segments_info"] if isthing[s["category_id"]] in kinds]
        ids[~np.isin(ids, [s["id"] for s in kept])] = 0
        ann["segments_info"] = kept
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(out / ann["file_name"])
    if kinds:
        info["categories"] = [c for c in info["categories"] if c["isthing"] in kinds]
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps(info))
    register_panoptic_dataset(name, meta.image_root, str(out), str(path), replace=True)
    return path, isthing


def test_all_void_panoptic_test_set_is_refused_before_the_first_image(synthetic_datasets,
                                                                      tmp_path):
    path, _ = _panoptic_copy(synthetic_datasets, tmp_path, "rel_all_void",
                             kinds=())
    assert DatasetCatalog.get("rel_all_void")  # the dataset itself loads
    with pytest.raises(ValueError, match=rf"'rel_all_void': none of the \d+ images of "
                                         rf"{str(path)!r} has a \(non-crowd\) ground-truth"):
        build_dataseg_evaluator(None, "rel_all_void", str(tmp_path / "out"))


def test_panoptic_group_without_any_segment_is_nan(synthetic_datasets, tmp_path, caplog):
    """A things-only json: panopticapi divided by zero classes for PQ_st."""
    _, isthing = _panoptic_copy(synthetic_datasets, tmp_path, "rel_things_only",
                                kinds=(1,))
    assert 0 in isthing.values() and 1 in isthing.values()  # the original has both kinds
    evaluator = build_dataseg_evaluator(None, "rel_things_only", str(tmp_path / "out"))
    evaluator.reset()
    for d in DatasetCatalog.get("rel_things_only"):
        rgb = np.asarray(Image.open(d["pan_seg_file_name"]).convert("RGB")).astype(np.int64)
        ids = torch.from_numpy((rgb @ np.array([1, 256, 65536])).astype(np.int32))
        segments = [{"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
                    for s in d["segments_info"]]
        evaluator.process([d], [{"panoptic_seg": (ids, segments)}])
    with caplog.at_level(logging.WARNING, logger="dataseg.evaluation.checks"):
        results = evaluator.evaluate()["panoptic_seg"]
    assert results["PQ"] == pytest.approx(100.0) and results["PQ_th"] == pytest.approx(100.0)
    assert np.isnan(results["PQ_st"]) and np.isnan(results["SQ_st"])
    assert "'rel_things_only': panoptic_seg/PQ_st is NaN" in caplog.text
    from panopticapi.evaluation import PQStat

    assert PQStat.pq_average.__name__ == "pq_average" and \
        PQStat.pq_average.__qualname__ == "PQStat.pq_average"  # restored after evaluate
