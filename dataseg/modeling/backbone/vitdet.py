"""ViTDet backbone (detectron2's plain ViT + simple feature pyramid) for yacs configs."""

from functools import partial

from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid, ViT

__all__ = ["build_vitdet_backbone"]


@BACKBONE_REGISTRY.register()
def build_vitdet_backbone(cfg, input_shape: ShapeSpec):
    """ViT + SimpleFeaturePyramid from ``MODEL.VIT.*``; outputs p2..p5 (strides 4..32).

    The module tree is ``SimpleFeaturePyramid.net = ViT``, the layout of detectron2's ViTDet,
    so MAE checkpoints load through ``MODEL.WEIGHTS ...mae_pretrain_vit_*.pth`` with
    ``?matching_heuristics=True`` exactly as for detectron2's own ViTDet models.
    """
    v = cfg.MODEL.VIT
    if input_shape is not None and input_shape.channels not in (None, 3):
        raise ValueError(f"ViTDet expects 3 input channels, got {input_shape.channels}.")
    global_blocks = set(v.GLOBAL_ATTN_INDEXES)
    if any(i >= v.DEPTH for i in global_blocks):
        raise ValueError(
            f"MODEL.VIT.GLOBAL_ATTN_INDEXES {sorted(global_blocks)} exceed DEPTH {v.DEPTH}.")
    net = ViT(
        img_size=v.IMG_SIZE,
        patch_size=v.PATCH_SIZE,
        embed_dim=v.EMBED_DIM,
        depth=v.DEPTH,
        num_heads=v.NUM_HEADS,
        mlp_ratio=v.MLP_RATIO,
        qkv_bias=True,
        drop_path_rate=v.DROP_PATH_RATE,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_size=v.WINDOW_SIZE,
        window_block_indexes=[i for i in range(v.DEPTH) if i not in global_blocks],
        use_rel_pos=v.USE_REL_POS,
        out_feature="last_feat",
    )
    return SimpleFeaturePyramid(
        net=net,
        in_feature="last_feat",
        out_channels=v.OUT_CHANNELS,
        scale_factors=tuple(v.SCALE_FACTORS),
        top_block=None,
        norm=v.NORM,
        square_pad=0,
    )
