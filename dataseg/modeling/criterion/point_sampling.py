"""Point sampling helpers for the criterion (on top of detectron2's PointRend utilities).

Ground-truth masks arrive as bool tensors at the padded image size (4x the prediction size).
Converting a (K, H, W) bool tensor to float for ``grid_sample`` costs K*H*W*4 bytes (300
segments at 512x512: 300 MB) per call; ``sample_binary_masks`` reads only the four corner
pixels of every sampled point instead, with the same bilinear weights and zero padding as
``point_sample(..., align_corners=False)``.
"""

import torch
from torch.nn import functional as F

__all__ = ["read_mask_pixels", "sample_binary_masks", "sample_shared_points"]


def sample_binary_masks(
    masks: torch.Tensor, mask_index: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear"
) -> torch.Tensor:
    """Sample binary masks at normalised points without a float copy of the masks.

    With ``mode="bilinear"`` this equals
    ``point_sample(masks[mask_index, None].float(), coords, align_corners=False)[:, 0]``.
    ``mode="nearest"`` reads one pixel per point (4x fewer random memory reads, which
    dominate the cost): the pixel containing the point.

    Args:
        masks: bool/uint8 (K, H, W).
        mask_index: int64 (M,) which mask each row of ``coords`` samples.
        coords: (M, P, 2) or (P, 2) points in [0, 1] x [0, 1], (x, y) order; a (P, 2) tensor
            is shared by all rows.

    Returns:
        float32 (M, P).
    """
    _, H, W = masks.shape
    M = mask_index.numel()
    if coords.dim() == 2:
        coords = coords.unsqueeze(0)
    if M == 0:
        return torch.zeros(0, coords.shape[1], device=masks.device)
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")

    def read(lin):
        return read_mask_pixels(masks, mask_index, lin)

    if mode == "nearest":
        xi = (coords[..., 0].float() * W).long().clamp(0, W - 1)
        yi = (coords[..., 1].float() * H).long().clamp(0, H - 1)
        return read(yi * W + xi).float()
    # align_corners=False: pixel i covers [i, i+1) and its centre is at i + 0.5.
    x = coords[..., 0].float() * W - 0.5
    y = coords[..., 1].float() * H - 0.5
    x0 = x.floor()
    y0 = y.floor()
    wx1 = x - x0
    wy1 = y - y0
    x0 = x0.long()
    y0 = y0.long()
    out = None
    for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
        yy = y0 + dy
        y_ok = (yy >= 0) & (yy < H)
        for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
            xx = x0 + dx
            ok = y_ok & (xx >= 0) & (xx < W)
            val = read(yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1))
            term = (val * ok) * (wy * wx)
            out = term if out is None else out + term
    return out


def sample_shared_points(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Sample every channel of a batch of maps at ONE shared set of points.

    One ``grid_sample`` with the channels as queries, instead of repeating the points per
    query as ``point_sample`` needs.

    Args:
        maps: (B, Q, H, W).
        coords: (P, 2) normalised (x, y) points in [0, 1].

    Returns:
        (B, Q, P).
    """
    B = maps.shape[0]
    grid = (2.0 * coords.to(maps.dtype) - 1.0).view(1, -1, 1, 2).expand(B, -1, -1, -1)
    return F.grid_sample(maps, grid, align_corners=False).squeeze(-1)


def read_mask_pixels(masks: torch.Tensor, mask_index: torch.Tensor,
                     pixel: torch.Tensor) -> torch.Tensor:
    """``masks[mask_index[i]].flatten()[pixel[i, j]]`` as uint8 (M, P); ``pixel`` (M, P) or
    (P,) int64 linear pixel indices.

    Byte gathers from one flat view: several times faster than bool advanced indexing.
    """
    K, H, W = masks.shape
    M = mask_index.numel()
    if M == 0:
        return torch.zeros(0, pixel.shape[-1], dtype=torch.uint8, device=masks.device)
    flat = masks.reshape(-1)
    flat = flat.view(torch.uint8) if flat.dtype == torch.bool else flat.to(torch.uint8)
    index = (mask_index.view(M, 1) * (H * W) + pixel.expand(M, -1)).view(-1)
    # index_select reads the same bytes as take() ~1.7x faster on CPU.
    return flat.index_select(0, index).view(M, -1)
