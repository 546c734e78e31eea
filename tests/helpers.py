"""Helpers shared by several test files (tests import these, never each other).

Fixtures live in ``conftest.py``; this module holds plain functions and constants.
"""

import inspect
import os
from pathlib import Path

import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.structures import BitMasks, Instances

from dataseg.config import add_dataseg_config
from dataseg.engine import get_dataseg_cfg
from dataseg.modeling.criterion import (
    BoxSupervision,
    HungarianMatcher,
    MaskSupervision,
    MergeCriterion,
)

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(REPO / "configs" / "tiny" / "DaTaSeg-tiny.yaml")
# Command-line options that make the tiny config a fast CPU model with no text model to load.
TINY_OPTS = ["MODEL.DATASEG.TEXT.ENCODER", "Random", "INPUT.MIN_SIZE_TEST", "64",
             "INPUT.MAX_SIZE_TEST", "64", "MODEL.DEVICE", "cpu"]

# Hand-made dataset names with DaTaSeg metadata but no files (see register_model_metadata).
PAN, SEM, BOX, INS = ("test_modeling_pan", "test_modeling_sem", "test_modeling_box",
                      "test_modeling_ins")


def trainer_cfg(output_dir, train, test=(), **overrides):
    """The tiny training config shrunk for unit tests (64 px, Random text encoder, no workers).

    ``overrides`` are config keys with values, e.g. ``**{"SOLVER.MAX_ITER": 3}``.
    """
    opts = {
        "DATASETS.TRAIN": tuple(train), "DATASETS.TEST": tuple(test),
        "DATALOADER.DATASEG.SAMPLING_RATIOS": [1.0] * len(train),
        "DATALOADER.DATASEG.BATCH_SIZES": [2] * len(train),
        "INPUT.DATASEG.IMAGE_SIZES": [64], "INPUT.MIN_SIZE_TEST": 64, "INPUT.MAX_SIZE_TEST": 64,
        "MODEL.DATASEG.CRITERION.TRAIN_NUM_POINTS": 256,
        "MODEL.DATASEG.TEXT.ENCODER": "Random",
        "MODEL.DATASEG.TEXT.CACHE_DIR": os.path.join(str(output_dir), "text_cache"),
        "MODEL.DEVICE": "cpu", "DATALOADER.NUM_WORKERS": 0, "SEED": 11,
        "SOLVER.MAX_ITER": 2, "SOLVER.CHECKPOINT_PERIOD": 1000,
        "TEST.DATASEG.NUM_VISUALIZATIONS": 0, "OUTPUT_DIR": str(output_dir),
    }
    opts.update(overrides)
    flat = []
    for key, value in opts.items():
        flat += [key, value if isinstance(value, str) else str(value)]
    return get_dataseg_cfg(TINY_CONFIG, flat)


def model_cfg(tmp_path):
    """The tiny model config (Random text encoder, 256 training points) for model-only tests."""
    cfg = add_dataseg_config(get_cfg())
    cfg.merge_from_file(TINY_CONFIG)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DATASEG.TEXT.ENCODER = "Random"  # mechanics only; no model loading
    cfg.MODEL.DATASEG.TEXT.CACHE_DIR = str(tmp_path / "text_cache")
    cfg.MODEL.DATASEG.CRITERION.TRAIN_NUM_POINTS = 256
    return cfg


def register_model_metadata():
    """Give PAN / SEM / BOX / INS the DaTaSeg metadata the model reads (no files behind them)."""
    MetadataCatalog.get(PAN).set(
        dataseg_task="panoptic", dataseg_classes=["person", "car", "sky", "grass"],
        dataseg_isthing=[True, True, False, False],
        dataseg_test_outputs=("sem_seg", "panoptic_seg", "instances"))
    MetadataCatalog.get(SEM).set(
        dataseg_task="semantic", dataseg_classes=["wall", "floor", "tree"],
        dataseg_isthing=[False, False, False], dataseg_test_outputs=("sem_seg",))
    MetadataCatalog.get(BOX).set(
        dataseg_task="box", dataseg_classes=["cup", "bottle"], dataseg_isthing=[True, True],
        dataseg_test_outputs=("instances",))
    MetadataCatalog.get(INS).set(
        dataseg_task="instance", dataseg_classes=["cup", "bottle"],
        dataseg_isthing=[True, True], dataseg_test_outputs=("instances",))


def make_inputs(dataset, sizes=((64, 64), (48, 64)), task="panoptic", with_targets=True):
    """A batch of random uint8 images of ``dataset``, each with two rectangular segments."""
    g = torch.Generator().manual_seed(0)
    batch = []
    for h, w in sizes:
        x = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g),
             "height": h, "width": w, "dataset_name": dataset}
        if with_targets:
            inst = Instances((h, w))
            masks = torch.zeros(2, h, w, dtype=torch.bool)
            masks[0, : h // 2, : w // 2] = True
            masks[1, h // 2:, w // 3:] = True
            inst.gt_classes = torch.tensor([0, 1])
            inst.gt_boxes = BitMasks(masks).get_bounding_boxes()
            if task != "box":
                inst.gt_masks = BitMasks(masks)
            x["instances"] = inst
        batch.append(x)
    return batch


def _accepted(cls):
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def make_criterion(matcher=None, **kw):
    """A MergeCriterion from flat keyword arguments, each routed to the part that takes it
    (``merge="first_design"`` also gives the mask supervision the first design's arithmetic,
    and ``fast_paths`` defaults to "auto", as in the config)."""
    if kw.get("merge") == "first_design":
        kw.setdefault("first_merge_design", True)
    kw.setdefault("fast_paths", "auto")
    parts = {}
    for name, cls in (("mask_supervision", MaskSupervision), ("box_supervision", BoxSupervision)):
        parts[name] = cls(**{k: kw.pop(k) for k in list(kw) if k in _accepted(cls)})
    return MergeCriterion(matcher=matcher or HungarianMatcher(), **parts, **kw)
