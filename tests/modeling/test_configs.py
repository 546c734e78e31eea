"""Every yaml under configs/ loads, passes the DaTaSeg config checks and builds its model."""

import glob
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

import dataseg  # noqa: F401  (registers the datasets)
from dataseg.config import add_dataseg_config, check_dataseg_config

from helpers import REPO

ROOT = str(REPO)
CONFIGS = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"),
                                                recursive=True))


def load(path, tmp_path):
    cfg = add_dataseg_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, path))
    check_dataseg_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    # Build with random weights and random text embeddings: nothing is downloaded.
    cfg.MODEL.DATASEG.TEXT.ENCODER = "Random"
    cfg.MODEL.DATASEG.TEXT.CACHE_DIR = str(tmp_path)
    return cfg


def test_configs_found():
    assert "configs/tiny/DaTaSeg-tiny.yaml" in CONFIGS
    assert "configs/coco_ade_o365/DaTaSeg_ViTDet-L.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds(path, tmp_path):
    cfg = load(path, tmp_path)
    if "ViTDet-L" in path:
        # 300M parameters: check the wiring on a shallow copy of the same widths.
        cfg.MODEL.VIT.DEPTH = 2
        cfg.MODEL.VIT.GLOBAL_ATTN_INDEXES = [1]
    model = build_model(cfg)
    assert type(model).__name__ == "DaTaSeg"
    shapes = model.backbone.output_shape()
    assert set(cfg.MODEL.DATASEG.PIXEL_DECODER.IN_FEATURES) <= set(shapes)
    # Dataset names must be ones that `import dataseg` registers.
    registered = set(DatasetCatalog.list())
    missing = [n for n in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
               if n not in registered]
    assert not missing, f"{path} names unregistered datasets {missing}"


def test_tiny_vitdet_forward(tmp_path):
    cfg = load("configs/tiny/DaTaSeg-tiny-ViTDet.yaml", tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    MetadataCatalog.get("test_modeling_cfg_sem").set(
        dataseg_task="semantic", dataseg_classes=["a", "b"], dataseg_isthing=[False, False],
        dataseg_test_outputs=("sem_seg",))
    x = {"image": torch.zeros(3, 64, 96, dtype=torch.uint8), "height": 64, "width": 96,
         "dataset_name": "test_modeling_cfg_sem"}
    with torch.no_grad():
        (out,) = model([x])
    assert out["sem_seg"].shape == (2, 64, 96)
