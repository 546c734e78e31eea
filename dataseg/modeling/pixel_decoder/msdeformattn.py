"""MSDeformAttn pixel decoder: deformable encoder on coarse levels + FPN to stride 4.

The structure follows Mask2Former's ``MSDeformAttnPixelDecoder``
(https://github.com/facebookresearch/Mask2Former,
``mask2former/modeling/pixel_decoder/msdeformattn.py``, MIT License): 1x1 conv + GroupNorm
input projections of the coarse levels, sine position plus learnable level embeddings, a
deformable-attention encoder over the flattened levels, FPN lateral / output convs down to
the common stride, a 1x1 conv to the mask features, and the first three encoder maps as the
multi-scale features of the query decoder, with the same initialisations.
"""

from typing import Dict, List

import fvcore.nn.weight_init as weight_init
import torch
from torch import nn
from torch.nn import functional as F

from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm

from ..position_encoding import PositionEmbeddingSine
from ..registry import PIXEL_DECODER_REGISTRY
from .deformable_encoder import DeformableEncoder, DeformableEncoderLayer

__all__ = ["MSDeformAttnPixelDecoder", "build_pixel_decoder"]


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]):
    """Build the pixel decoder named by ``MODEL.DATASEG.PIXEL_DECODER.NAME``."""
    name = cfg.MODEL.DATASEG.PIXEL_DECODER.NAME
    return PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)


def _group_norm(norm: str, channels: int):
    # GN with 32 groups is the usual choice; tiny test widths need fewer groups.
    if norm == "GN":
        return nn.GroupNorm(min(32, channels), channels)
    return get_norm(norm, channels)


@PIXEL_DECODER_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder producing DaTaSeg's ``F`` (stride 4) and ``I_multi`` (3 scales).

    The coarse backbone levels (``deformable_in_features``) are projected to ``conv_dim``,
    tagged with sine position + learnable level embeddings and refined jointly by a
    multi-scale deformable-attention encoder. Finer levels are added top-down, FPN style,
    until ``common_stride``; a 1x1 conv turns the finest map into the mask features.

    Args:
        input_shape: backbone output shapes by feature name.
        in_features: features used, any order (sorted by stride internally).
        deformable_in_features: subset of ``in_features`` fed to the encoder.
        conv_dim: width of the encoder and FPN maps (``I_multi``).
        mask_dim: width of the mask features ``F``.
        norm: norm of the projection/FPN convs ("GN", "BN", "" ...).
        num_encoder_layers, nheads, num_points, dim_feedforward, dropout: encoder shape.
        common_stride: stride of the mask features.
        fast_paths: ``MODEL.DATASEG.FAST_PATHS`` of the encoder layers (see
            ``DeformableEncoderLayer``).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        in_features: List[str],
        deformable_in_features: List[str],
        conv_dim: int,
        mask_dim: int,
        norm: str = "GN",
        num_encoder_layers: int = 6,
        nheads: int = 8,
        num_points: int = 4,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        common_stride: int = 4,
        fast_paths: str = "off",
    ):
        super().__init__()
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"Pixel decoder IN_FEATURES {missing} are not produced by the backbone "
                f"(it outputs {sorted(input_shape)}); set MODEL.DATASEG.PIXEL_DECODER."
                "IN_FEATURES / DEFORMABLE_IN_FEATURES to match the backbone."
            )
        if not set(deformable_in_features) <= set(in_features):
            raise ValueError("DEFORMABLE_IN_FEATURES must be a subset of IN_FEATURES.")
        # Coarse to fine for the encoder (its first three outputs are I_multi).
        self.deformable_in_features = sorted(
            deformable_in_features, key=lambda f: -input_shape[f].stride)
        if len(self.deformable_in_features) < 3:
            raise ValueError("The query decoder needs 3 scales: give >= 3 deformable features.")
        finest_deformable = min(input_shape[f].stride for f in deformable_in_features)
        # FPN levels: finer than the encoder's levels, down to the common stride, coarse first.
        self.fpn_in_features = sorted(
            (f for f in in_features
             if input_shape[f].stride < finest_deformable
             and input_shape[f].stride >= common_stride),
            key=lambda f: -input_shape[f].stride,
        )
        if not self.fpn_in_features and finest_deformable != common_stride:
            raise ValueError(
                f"No input feature reaches COMMON_STRIDE {common_stride}; add a finer feature "
                "(e.g. res2 / p2) to IN_FEATURES."
            )
        self.common_stride = common_stride

        self.input_proj = nn.ModuleList()
        for f in self.deformable_in_features:
            proj = nn.Sequential(
                nn.Conv2d(input_shape[f].channels, conv_dim, kernel_size=1),
                _group_norm(norm, conv_dim) if norm else nn.Identity(),
            )
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
            self.input_proj.append(proj)
        num_levels = len(self.deformable_in_features)
        self.level_embed = nn.Parameter(torch.empty(num_levels, conv_dim))
        nn.init.normal_(self.level_embed)
        self.pos_embed = PositionEmbeddingSine(conv_dim // 2)
        layer = DeformableEncoderLayer(
            d_model=conv_dim, dim_feedforward=dim_feedforward, dropout=dropout,
            n_levels=num_levels, n_heads=nheads, n_points=num_points,
            fast_paths=fast_paths,
        )
        self.encoder = DeformableEncoder(layer, num_encoder_layers)

        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        use_bias = norm == ""
        for f in self.fpn_in_features:
            lateral = Conv2d(input_shape[f].channels, conv_dim, kernel_size=1, bias=use_bias,
                             norm=_group_norm(norm, conv_dim) if norm else None)
            output = Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                            norm=_group_norm(norm, conv_dim) if norm else None,
                            activation=F.relu)
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

    @classmethod
    def from_config(cls, cfg, input_shape):
        pd = cfg.MODEL.DATASEG.PIXEL_DECODER
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in pd.IN_FEATURES},
            "in_features": list(pd.IN_FEATURES),
            "deformable_in_features": list(pd.DEFORMABLE_IN_FEATURES),
            "conv_dim": pd.CONVS_DIM,
            "mask_dim": pd.MASK_DIM,
            "norm": pd.NORM,
            "num_encoder_layers": pd.NUM_ENCODER_LAYERS,
            "nheads": pd.NHEADS,
            "num_points": pd.NUM_POINTS,
            "dim_feedforward": pd.DIM_FEEDFORWARD,
            "dropout": pd.DROPOUT,
            "common_stride": pd.COMMON_STRIDE,
            "fast_paths": cfg.MODEL.DATASEG.FAST_PATHS,
        }

    def forward(self, features: Dict[str, torch.Tensor]):
        """
        Returns:
            mask_features: (B, mask_dim, H/common_stride, W/common_stride).
            multi_scale_features: the first 3 encoder maps, coarse to fine, (B, conv_dim, h, w).
        """
        device_type = next(iter(features.values())).device.type
        # Bilinear corner weights and sampling locations need fp32 (as in Deformable DETR).
        with torch.autocast(device_type=device_type, enabled=False):
            srcs, pos = [], []
            for lvl, (f, proj) in enumerate(zip(self.deformable_in_features, self.input_proj)):
                x = proj(features[f].float())
                srcs.append(x)
                pos.append(self.pos_embed(x) + self.level_embed[lvl].view(1, -1, 1, 1))
            tokens, shapes = self.encoder(srcs, pos)
        B = tokens.shape[0]
        maps = [
            t.transpose(1, 2).reshape(B, -1, h, w)
            for t, (h, w) in zip(tokens.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        y = maps[-1]
        for f, lateral, output in zip(self.fpn_in_features, self.lateral_convs,
                                      self.output_convs):
            x = lateral(features[f].float())
            y = output(x + F.interpolate(y, size=x.shape[-2:], mode="bilinear",
                                         align_corners=False))
        return self.mask_features(y), maps[:3]
