"""The tiny model on real mapped batches of the generated synthetic datasets (data contract)."""

import os

import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from dataseg.data.mappers import build_dataseg_mapper

from helpers import REPO

ROOT = str(REPO)


@pytest.fixture
def tiny(dataseg_cfg, synthetic_datasets, tmp_path):
    cfg = dataseg_cfg
    cfg.merge_from_file(os.path.join(ROOT, "configs", "tiny", "DaTaSeg-tiny.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.DATASEG.TEXT.ENCODER = "Random"
    cfg.MODEL.DATASEG.TEXT.CACHE_DIR = str(tmp_path)
    cfg.MODEL.DATASEG.CRITERION.TRAIN_NUM_POINTS = 256
    cfg.INPUT.DATASEG.IMAGE_SIZES = [64]
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    names = [synthetic_datasets[k] for k in ("panoptic_train", "semantic_train", "box_train")]
    cfg.DATASETS.TRAIN = tuple(names)
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def mapped(cfg, name, is_train, n=2):
    mapper = build_dataseg_mapper(cfg, name, is_train=is_train)
    return [mapper(d) for d in DatasetCatalog.get(name)[:n]]


@pytest.mark.parametrize("short", ["panoptic_train", "semantic_train", "box_train"])
def test_train_step_on_mapped_batch(tiny, synthetic_datasets, short):
    cfg, model = tiny
    model.train()
    losses = model(mapped(cfg, synthetic_datasets[short], True))
    total = sum(losses.values())
    assert torch.isfinite(total) and total > 0
    total.backward()


@pytest.mark.parametrize("short", ["panoptic_val", "semantic_val", "box_val"])
def test_inference_on_mapped_batch(tiny, synthetic_datasets, short):
    cfg, model = tiny
    model.eval()
    name = synthetic_datasets[short]
    keys = set(MetadataCatalog.get(name).dataseg_test_outputs)
    inputs = mapped(cfg, name, False)
    with torch.no_grad():
        outputs = model(inputs)
    for x, out in zip(inputs, outputs):
        assert set(out) == keys
        if "sem_seg" in out:
            assert out["sem_seg"].shape[-2:] == (x["height"], x["width"])
        if "instances" in out:
            assert out["instances"].image_size == (x["height"], x["width"])
