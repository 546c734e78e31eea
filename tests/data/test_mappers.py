"""Task mappers give the mapped-dict contract of docs/interfaces.md."""

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BitMasks, Boxes

from dataseg.data import (
    MAPPER_REGISTRY,
    BoxDatasetMapper,
    DatasetValidationError,
    PanopticDatasetMapper,
    build_dataseg_mapper,
)
from dataseg.data.mappers import per_dataset_value

TRAIN = ["panoptic_train", "semantic_train", "instance_train", "box_train", "box_val"]


def test_registry_covers_every_task():
    assert set(MAPPER_REGISTRY) == {"panoptic", "semantic", "instance", "box"}


@pytest.mark.parametrize("short", TRAIN)
def test_train_contract(short, synthetic_datasets, dataseg_cfg):
    name = synthetic_datasets[short]
    meta = MetadataCatalog.get(name)
    mapper = build_dataseg_mapper(dataseg_cfg, name, is_train=True)
    num_classes = len(meta.dataseg_classes)
    seen = 0
    for d in DatasetCatalog.get(name)[:3]:
        out = mapper(d)
        assert out["dataset_name"] == name
        assert out["image"].dtype == torch.uint8 and tuple(out["image"].shape) == (3, 64, 64)
        assert (out["height"], out["width"]) == (64, 64)  # original size of generated images
        inst = out["instances"]
        assert inst.image_size == (64, 64)
        assert inst.gt_classes.dtype == torch.int64
        if len(inst):
            assert 0 <= int(inst.gt_classes.min()) and int(inst.gt_classes.max()) < num_classes
        seen += len(inst)
        if meta.dataseg_task == "box":
            assert not inst.has("gt_masks") and isinstance(inst.gt_boxes, Boxes)
            continue
        assert isinstance(inst.gt_masks, BitMasks)
        masks = inst.gt_masks.tensor
        assert masks.dtype == torch.bool and tuple(masks.shape[1:]) == (64, 64)
        assert bool(masks.flatten(1).any(1).all()), "every mask has pixels"
        if meta.dataseg_task in ("panoptic", "semantic"):
            assert int(masks.sum(0).max()) <= 1, "segments do not overlap"
        if meta.dataseg_task == "semantic":
            assert len(set(inst.gt_classes.tolist())) == len(inst), "one mask per class"
            assert not inst.has("gt_boxes")
        else:
            assert isinstance(inst.gt_boxes, Boxes) and len(inst.gt_boxes) == len(inst)
    assert seen > 0


def test_panoptic_masks_cover_things_and_stuff(synthetic_datasets, dataseg_cfg):
    name = synthetic_datasets["panoptic_train"]
    isthing = MetadataCatalog.get(name).dataseg_isthing
    mapper = build_dataseg_mapper(dataseg_cfg, name, is_train=True)
    kinds = set()
    for d in DatasetCatalog.get(name):
        kinds |= {isthing[c] for c in mapper(d)["instances"].gt_classes.tolist()}
    assert kinds == {True, False}


def test_semantic_ignore_is_in_no_mask(synthetic_datasets, dataseg_cfg):
    name = synthetic_datasets["semantic_train"]
    mapper = build_dataseg_mapper(dataseg_cfg, name, is_train=True)
    for d in DatasetCatalog.get(name):
        out = mapper(d)
        covered = out["instances"].gt_masks.tensor.any(0)
        assert torch.equal(covered, out["sem_seg"] != 255)


@pytest.mark.parametrize("short", ["panoptic_val", "semantic_val", "box_val", "instance_val"])
def test_test_mapper(short, synthetic_datasets, dataseg_cfg):
    name = synthetic_datasets[short]
    d = DatasetCatalog.get(name)[0]
    out = build_dataseg_mapper(dataseg_cfg, name, is_train=False)(d)
    assert "instances" not in out and "annotations" not in out
    assert (out["height"], out["width"]) == (64, 64)
    assert tuple(out["image"].shape) == (3, 96, 96)  # shortest edge -> INPUT.MIN_SIZE_TEST
    assert out["image"].dtype == torch.uint8 and out["dataset_name"] == name
    assert out["file_name"] == d["file_name"]


def test_per_dataset_augmentation_values(dataseg_cfg):
    train = ["a", "b"]
    assert per_dataset_value([32, 64], "b", train) == 64
    assert per_dataset_value([32], "b", train) == 32
    assert per_dataset_value([32, 64], "other", train) == 32
    with pytest.raises(ValueError):
        per_dataset_value([1, 2, 3], "a", train)


def test_mapper_is_configurable_without_cfg(synthetic_datasets):
    name = synthetic_datasets["box_train"]
    mapper = BoxDatasetMapper(True, dataset_name=name, augmentations=[], image_format="RGB")
    out = mapper(DatasetCatalog.get(name)[0])
    assert tuple(out["image"].shape) == (3, 64, 64) and len(out["instances"]) > 0


def test_mask_image_size_mismatch_is_reported(synthetic_datasets, tmp_path):
    name = synthetic_datasets["panoptic_train"]
    d = dict(DatasetCatalog.get(name)[0])
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(small)
    d["pan_seg_file_name"] = str(small)
    mapper = PanopticDatasetMapper(True, dataset_name=name, augmentations=[])
    with pytest.raises(DatasetValidationError, match="small.png"):
        mapper(d)


def test_each_test_dataset_has_its_own_test_size(dataseg_cfg, synthetic_datasets):
    import dataseg  # noqa: F401
    from dataseg.config import check_dataseg_config
    from dataseg.data.mappers import test_image_size

    cfg = dataseg_cfg.clone()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 100, 200
    # The benchmarks' standard resolutions come with their registration ...
    assert test_image_size(cfg, "dataseg_ade20k_sem_seg_val") == (512, 2048)
    assert test_image_size(cfg, "dataseg_pascal_context_59_val") == (512, 2048)
    assert test_image_size(cfg, "dataseg_coco_2017_val_panoptic") == (800, 1333)
    assert test_image_size(cfg, "dataseg_cityscapes_fine_panoptic_val") == (1024, 2048)
    # ... datasets without one use INPUT.MIN/MAX_SIZE_TEST ...
    assert test_image_size(cfg, synthetic_datasets["semantic_val"]) == (100, 200)
    # ... and an aligned config list wins over both.
    cfg.DATASETS.TEST = ("dataseg_ade20k_sem_seg_val", synthetic_datasets["semantic_val"])
    cfg.INPUT.DATASEG.MIN_SIZES_TEST = [640, 64]
    cfg.INPUT.DATASEG.MAX_SIZES_TEST = [2560, 128]
    assert test_image_size(cfg, "dataseg_ade20k_sem_seg_val") == (640, 2560)
    assert test_image_size(cfg, synthetic_datasets["semantic_val"]) == (64, 128)
    cfg.INPUT.DATASEG.MAX_SIZES_TEST = [2560]
    cfg.DATASEG_CONFIG = True
    cfg.MODEL.META_ARCHITECTURE = "DaTaSeg"
    with pytest.raises(ValueError, match="MAX_SIZES_TEST has 1 entries but DATASETS.TEST has 2"):
        check_dataseg_config(cfg)
