"""Multi-scale deformable attention module (Deformable DETR) on the pure-PyTorch op.

``MSDeformAttn`` follows Deformable DETR's module of the same name
(https://github.com/fundamentalvision/Deformable-DETR, ``models/ops/modules/ms_deform_attn.py``,
Apache License 2.0): the same four projections, the parameter initialisation of
``reset_parameters`` (zero offset weights, a bias putting head ``m``'s points on rings in
direction ``2 pi m / M``, uniform attention at init, Xavier value / output projections) and
the offsets normalised by each level's (W, H).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..fast_paths import check_fast_paths, use_fast_paths
from ..fast_paths.msda_embedding_bag import ms_deform_attn_embedding_bag
from .ms_deform_attn_func import ms_deform_attn_grid_sample

__all__ = ["MSDeformAttn", "ms_deform_attn"]


def ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights, fast: bool):
    """The sampling of ``MSDeformAttn`` (shapes: ``ops.ms_deform_attn_func``): the plain
    per-level ``grid_sample``, or its embedding-bag fast path when ``fast``."""
    if fast:
        return ms_deform_attn_embedding_bag(value, spatial_shapes, sampling_locations,
                                            attention_weights)
    return ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations,
                                      attention_weights)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query reads P points per head and level.

    Args:
        d_model: channel width of queries and values.
        n_levels: number of feature levels L.
        n_heads: attention heads M (``d_model`` must be divisible by it).
        n_points: sampling points P per head and level.
        fast_paths: ``MODEL.DATASEG.FAST_PATHS``: "auto" samples with the embedding-bag fast
            path on CPU (``fast_paths.msda_embedding_bag``), "off" with the plain per-level
            ``grid_sample`` (``ops.ms_deform_attn_grid_sample``) everywhere.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, fast_paths="off"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        self.d_model, self.n_levels, self.n_heads, self.n_points = (
            d_model, n_levels, n_heads, n_points)
        self.fast_paths = check_fast_paths(fast_paths)
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        # Start with points spread on rings around the reference, one direction per head
        # and growing with the point index: every head looks somewhere different at init.
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        rings = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2) * rings
        bias = bias.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, query, reference_points, value, spatial_shapes, padding_mask=None):
        """
        Args:
            query: (B, Q, C).
            reference_points: (B, Q, L, 2) normalised (x, y) reference of each query per level.
            value: (B, S, C) flattened multi-level input, S = sum_l H_l * W_l.
            spatial_shapes: list of (H_l, W_l) or an (L, 2) int tensor.
            padding_mask: optional (B, S) bool, True where ``value`` is padding (zeroed).

        Returns:
            (B, Q, C)
        """
        B, Q, _ = query.shape
        S = value.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        if isinstance(spatial_shapes, torch.Tensor):
            shapes = [tuple(int(v) for v in hw) for hw in spatial_shapes.tolist()]
        else:
            shapes = [tuple(hw) for hw in spatial_shapes]
        v = self.value_proj(value)
        if padding_mask is not None:
            v = v.masked_fill(padding_mask[..., None], 0.0)
        v = v.view(B, S, M, self.d_model // M)
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = F.softmax(self.attention_weights(query).view(B, Q, M, L * P), -1)
        weights = weights.view(B, Q, M, L, P)
        # Offsets are in pixels of each level: divide by (W_l, H_l) to normalise.
        normaliser = torch.tensor(
            [[w, h] for h, w in shapes], device=query.device, dtype=query.dtype
        ).view(1, 1, 1, L, 1, 2)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser
        out = ms_deform_attn(v, shapes, locations, weights, use_fast_paths(self.fast_paths, v))
        return self.output_proj(out)
