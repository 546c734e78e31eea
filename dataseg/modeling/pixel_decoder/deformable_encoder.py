"""Deformable-attention transformer encoder over multi-scale feature maps.

The post-norm layer (deformable self-attention, then a ReLU FFN) and the per-level
pixel-centre reference points follow Deformable DETR's encoder
(https://github.com/fundamentalvision/Deformable-DETR, ``models/deformable_transformer.py``,
Apache License 2.0) as Mask2Former uses it (no padding masks: padded images).
"""

import copy
from typing import List, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ..fast_paths import use_fast_paths
from ..ops import MSDeformAttn

__all__ = ["DeformableEncoderLayer", "DeformableEncoder"]


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: multi-scale deformable self-attention, then a ReLU FFN.

    Args:
        d_model, n_levels, n_heads, n_points: see ``MSDeformAttn``.
        dim_feedforward: FFN hidden width.
        dropout: dropout after attention and inside the FFN.
        fast_paths: ``MODEL.DATASEG.FAST_PATHS``. "auto" on CPU: the attention's
            embedding-bag path, and in training the FFN keeps only its input for backward
            and recomputes its hidden activation (the layer's largest, 4x the model width)
            there, for less memory at the same values (one of the CPU fast paths,
            ``dataseg.modeling.fast_paths``).
    """

    def __init__(self, d_model=256, dim_feedforward=1024, dropout=0.0, n_levels=3,
                 n_heads=8, n_points=4, fast_paths="off"):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, fast_paths=fast_paths)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes):
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes)
        src = self.norm1(src + self.dropout(attn))
        if (use_fast_paths(self.self_attn.fast_paths, src) and torch.is_grad_enabled()
                and src.requires_grad):
            ffn = checkpoint(self._ffn, src, use_reentrant=False)
        else:
            ffn = self._ffn(src)
        return self.norm2(src + self.dropout(ffn))

    def _ffn(self, src):
        # In-place ReLU: the hidden activation is the layer's largest temporary. The linears
        # run on 2-D tokens so that the hidden is not a view: an in-place op on a view makes
        # autograd rebuild the base in backward (a zero fill + copy of the hidden per layer).
        hidden = F.relu(self.linear1(src.flatten(0, -2)), inplace=True)
        return self.linear2(self.dropout(hidden)).view(src.shape)


class DeformableEncoder(nn.Module):
    """A stack of ``DeformableEncoderLayer`` over flattened multi-scale maps.

    Args:
        layer: the layer to replicate.
        num_layers: depth.
    """

    def __init__(self, layer: DeformableEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.reset_parameters()

    def reset_parameters(self):
        """Mask2Former's encoder initialisation: Xavier-uniform for every parameter with more
        than one dimension (the FFN's included), then the deformable attention's own reset."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()

    @staticmethod
    def reference_points(shapes: List[Tuple[int, int]], batch: int, device, dtype):
        """Normalised pixel centres of every level, repeated for each level: (B, S, L, 2).

        Images are padded, not masked, so every level covers the same normalised extent and
        a pixel's reference is the same normalised point on every level.
        """
        refs = []
        for h, w in shapes:
            ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
            xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            refs.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))
        ref = torch.cat(refs, 0)  # (S, 2)
        return ref[None, :, None, :].expand(batch, -1, len(shapes), -1)

    def forward(self, srcs: List[torch.Tensor], pos_embeds: List[torch.Tensor]):
        """
        Args:
            srcs: L maps (B, C, H_l, W_l).
            pos_embeds: L position (+ level) embeddings of the same shapes.

        Returns:
            (B, S, C) encoded tokens and the list of (H_l, W_l).
        """
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) for p in pos_embeds], 1)
        ref = self.reference_points(shapes, src.shape[0], src.device, src.dtype)
        for layer in self.layers:
            src = layer(src, pos, ref, shapes)
        return src, shapes
