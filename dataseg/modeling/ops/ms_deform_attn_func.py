"""Multi-scale deformable attention sampling (Deformable DETR), pure PyTorch: the plain path.

``ms_deform_attn_grid_sample`` follows the pure-PyTorch reference of Deformable DETR
(``ms_deform_attn_core_pytorch``, https://github.com/fundamentalvision/Deformable-DETR,
Apache License 2.0): one bilinear ``F.grid_sample`` per level, then the attention-weighted
sum. It runs on every device and in the ONNX export; on CPU the model runs the equivalent
embedding-bag path of ``dataseg.modeling.fast_paths.msda_embedding_bag`` instead.

Shapes follow Deformable DETR's convention:

- ``value``: (B, S, M, Dh) with S = sum_l H_l * W_l (levels flattened and concatenated),
- ``spatial_shapes``: (L, 2) int64 rows (H_l, W_l),
- ``sampling_locations``: (B, Q, M, L, P, 2) normalised (x, y) in [0, 1] (pixel centres at
  (i + 0.5) / size, i.e. ``grid_sample(align_corners=False)``; outside samples read zeros),
- ``attention_weights``: (B, Q, M, L, P),
- output: (B, Q, M * Dh).
"""

from typing import List

import torch
import torch.nn.functional as F

__all__ = ["ms_deform_attn_grid_sample"]


def _shapes_as_list(spatial_shapes) -> List[List[int]]:
    """(L, 2) shapes (a tensor or pairs) as ``[[H_l, W_l], ...]``, symbolic sizes kept."""
    if isinstance(spatial_shapes, torch.Tensor):
        return [[int(h), int(w)] for h, w in spatial_shapes.tolist()]
    return [[_size(h), _size(w)] for h, w in spatial_shapes]


def _size(v):
    # Sizes traced by torch.export (ONNX export) are symbolic: int() would fix them to the
    # example input's size.
    return v if isinstance(v, torch.SymInt) else int(v)


def ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights):
    """Bilinear ``grid_sample`` per level (zeros padding), then the attention-weighted sum:
    (B, Q, M * Dh)."""
    shapes = _shapes_as_list(spatial_shapes)
    B, S, M, Dh = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (B, HW, M, Dh) -> (B*M, Dh, H, W)
        v = value_list[lvl].flatten(2).transpose(1, 2).reshape(B * M, Dh, h, w)
        # (B, Q, M, P, 2) -> (B*M, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*M, Dh, Q, P)
    # (B, Q, M, L, P) -> (B*M, 1, Q, L*P)
    attn = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * attn).sum(-1)  # (B*M, Dh, Q)
    return out.view(B, M * Dh, Q).transpose(1, 2).contiguous()


