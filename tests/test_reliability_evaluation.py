"""Evaluation never reports an impossible number without saying so."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

from dataseg.data import build_dataseg_test_loader, register_semantic_dataset
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
