"""The optimizer's per-parameter learning rates: backbone multiplier and ViTDet's layer-wise
decay (SOLVER.VIT_LAYER_DECAY_RATE), read back from the optimizer the trainer builds."""

import pytest
from detectron2.modeling import build_model

from dataseg.engine import DaTaSegTrainer, get_dataseg_cfg

from helpers import REPO

TINY_VIT = str(REPO / "configs" / "tiny" / "DaTaSeg-tiny-ViTDet.yaml")
TINY_R50 = str(REPO / "configs" / "tiny" / "DaTaSeg-tiny.yaml")
FAST = ["MODEL.DATASEG.TEXT.ENCODER", "Random", "MODEL.DEVICE", "cpu"]


def _lrs(config_file, *opts):
    cfg = get_dataseg_cfg(config_file, FAST + [str(o) for o in opts])
    model = build_model(cfg)
    optimizer = DaTaSegTrainer.build_optimizer(cfg, model)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {name: lr_of[id(p)] for name, p in model.named_parameters() if id(p) in lr_of}


def test_vit_layer_decay_by_value():
    # Tiny ViT: 2 blocks. Layers: embeddings 0, blocks.0 -> 1, blocks.1 -> 2, pyramid 3;
    # factor = multiplier * rate ** (3 - layer).
    lrs = _lrs(TINY_VIT, "SOLVER.BASE_LR", 1e-3, "SOLVER.BACKBONE_MULTIPLIER", 0.1,
               "SOLVER.VIT_LAYER_DECAY_RATE", 0.5)
    expect = {
        "backbone.net.patch_embed.proj.weight": 1e-3 * 0.1 * 0.125,
        "backbone.net.pos_embed": 1e-3 * 0.1 * 0.125,
        "backbone.net.blocks.0.attn.qkv.weight": 1e-3 * 0.1 * 0.25,
        "backbone.net.blocks.0.norm1.bias": 1e-3 * 0.1 * 0.25,
        "backbone.net.blocks.1.mlp.fc2.weight": 1e-3 * 0.1 * 0.5,
        "backbone.simfp_2.0.weight": 1e-3 * 0.1,  # after the last block: no decay
    }
    for name, lr in expect.items():
        assert lrs[name] == pytest.approx(lr, rel=1e-9), name
    heads = {n: lr for n, lr in lrs.items() if not n.startswith("backbone.")}
    assert heads and all(lr == pytest.approx(1e-3) for lr in heads.values())


def test_decay_rate_one_is_the_flat_backbone_multiplier():
    lrs = _lrs(TINY_VIT, "SOLVER.BASE_LR", 1e-3, "SOLVER.BACKBONE_MULTIPLIER", 0.1)
    assert {round(lr, 12) for n, lr in lrs.items() if n.startswith("backbone.")} == {1e-4}


def test_shipped_vitdet_recipes_set_vitdet_decay():
    base = get_dataseg_cfg(str(REPO / "configs/coco_ade_o365/DaTaSeg_ViTDet-B.yaml"))
    large = get_dataseg_cfg(str(REPO / "configs/coco_ade_o365/DaTaSeg_ViTDet-L.yaml"))
    r50 = get_dataseg_cfg(str(REPO / "configs/coco_ade_o365/DaTaSeg_R50.yaml"))
    assert (base.SOLVER.VIT_LAYER_DECAY_RATE, base.MODEL.VIT.DEPTH) == (0.7, 12)
    assert (large.SOLVER.VIT_LAYER_DECAY_RATE, large.MODEL.VIT.DEPTH) == (0.8, 24)
    assert base.SOLVER.BACKBONE_MULTIPLIER == large.SOLVER.BACKBONE_MULTIPLIER == 1.0
    assert r50.SOLVER.VIT_LAYER_DECAY_RATE == 1.0


def test_decay_on_a_resnet_is_refused():
    with pytest.raises(ValueError, match="no ViT blocks.*build_resnet_backbone"):
        _lrs(TINY_R50, "SOLVER.VIT_LAYER_DECAY_RATE", 0.7)


def test_decay_rate_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"VIT_LAYER_DECAY_RATE must be in \(0, 1\]"):
        _lrs(TINY_VIT, "SOLVER.VIT_LAYER_DECAY_RATE", 1.5)
