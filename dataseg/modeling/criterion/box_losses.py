"""Box supervision of masks: projection term and optional pairwise colour-affinity term.

Both follow BoxInst (Tian et al., CVPR 2021) in spirit; the code is ours.

* Projection: a mask fits its box iff its max-projections onto the x and y axes equal the
  box's. Dice between the predicted projections and the filled box's projections, summed
  over the two axes. Computed at the mask prediction resolution, the box scaled to it.
* Pairwise: neighbouring pixels of similar colour (LAB distance) inside the box should get the
  same label; loss = -log P(same label) on those edges.
"""

from typing import Sequence, Tuple

import torch
from torch.nn import functional as F

__all__ = [
    "box_projection_targets",
    "mask_projections",
    "projection_dice",
    "projection_cost",
    "images_to_lab",
    "color_similarity",
    "unfold_neighbours",
    "pairwise_loss",
]


def box_projection_targets(
    boxes: torch.Tensor, mask_size: Tuple[int, int], image_size: Tuple[int, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """x / y projections of filled boxes at the mask resolution.

    A mask cell is inside the box when its pixel footprint overlaps the box, so a box smaller
    than a cell still covers the cell it sits in.

    Args:
        boxes: (K, 4) XYXY in pixels of the padded image.
        mask_size: (h, w) of the mask predictions.
        image_size: (H, W) of the padded image the boxes refer to.

    Returns:
        (K, w) and (K, h) float 0/1 projections.
    """
    h, w = mask_size
    H, W = image_size
    boxes = boxes.float()
    sx = W / w
    sy = H / h
    x0, y0, x1, y1 = boxes.unbind(-1)
    # Degenerate boxes still cover the cell they sit in.
    x1 = torch.maximum(x1, x0 + 1e-3)
    y1 = torch.maximum(y1, y0 + 1e-3)
    cols = torch.arange(w, device=boxes.device, dtype=boxes.dtype) * sx
    rows = torch.arange(h, device=boxes.device, dtype=boxes.dtype) * sy
    bx = ((cols[None] + sx > x0[:, None]) & (cols[None] < x1[:, None])).float()
    by = ((rows[None] + sy > y0[:, None]) & (rows[None] < y1[:, None])).float()
    return bx, by


def mask_projections(mask_logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max-projections of mask probabilities onto x (N, w) and y (N, h).

    ``max(sigmoid(x)) == sigmoid(max(x))``: the max is taken on logits, one sigmoid per line.
    """
    px = torch.sigmoid(mask_logits.amax(dim=-2))
    py = torch.sigmoid(mask_logits.amax(dim=-1))
    return px, py


def projection_dice(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Squared-denominator dice ``1 - 2|pt| / (|p^2| + |t^2| + eps)`` per row: (M,)."""
    inter = (pred * target).sum(-1)
    union = (pred * pred).sum(-1) + (target * target).sum(-1) + eps
    return 1.0 - 2.0 * inter / union


def projection_cost(
    px: torch.Tensor, py: torch.Tensor, bx: torch.Tensor, by: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """All-pairs projection dice (x + y) between N predictions and K boxes: (N, K)."""

    def dice_all_pairs(p, t):
        inter = p @ t.transpose(0, 1)
        union = (p * p).sum(-1)[:, None] + (t * t).sum(-1)[None, :] + eps
        return 1.0 - 2.0 * inter / union

    return dice_all_pairs(px, bx) + dice_all_pairs(py, by)


def images_to_lab(
    images: torch.Tensor,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    input_format: str = "BGR",
    stride: int = 4,
) -> torch.Tensor:
    """Normalised padded images (B, 3, H, W) -> CIE-LAB at 1/stride resolution (B, 3, h, w).

    Un-normalises with the model's pixel mean/std, averages stride x stride blocks (the mask
    resolution), then converts sRGB (0..255) to LAB (D65 white).
    """
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(pixel_std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    raw = images.float() * std + mean
    if stride > 1:
        raw = F.avg_pool2d(raw, kernel_size=stride, stride=stride)
    if input_format.upper() == "BGR":
        raw = raw.flip(1)
    rgb = (raw / 255.0).clamp(0.0, 1.0)
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    to_xyz = torch.tensor(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
         [0.019334, 0.119193, 0.950227]],
        device=images.device,
    )
    xyz = torch.einsum("ij,bjhw->bihw", to_xyz, linear)
    white = torch.tensor([0.950456, 1.0, 1.088754], device=images.device).view(1, 3, 1, 1)
    t = xyz / white
    f = torch.where(t > 0.008856, t.clamp(min=1e-12) ** (1.0 / 3.0), 7.787 * t + 16.0 / 116.0)
    L = 116.0 * f[:, 1] - 16.0
    a = 500.0 * (f[:, 0] - f[:, 1])
    b = 200.0 * (f[:, 1] - f[:, 2])
    return torch.stack([L, a, b], dim=1)


def unfold_neighbours(x: torch.Tensor, size: int, dilation: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, size*size - 1, h, w): each pixel's dilated neighbours (no centre).

    Outside the image the neighbours are 0.
    """
    N, C, h, w = x.shape
    pad = dilation * (size // 2)
    cols = F.unfold(x, kernel_size=size, dilation=dilation, padding=pad)
    cols = cols.view(N, C, size * size, h, w)
    centre = size * size // 2
    keep = [i for i in range(size * size) if i != centre]
    return cols[:, :, keep]


def color_similarity(lab: torch.Tensor, size: int, dilation: int) -> torch.Tensor:
    """exp(-0.5 * LAB distance) between each pixel and its neighbours: (B, size^2-1, h, w).

    Edges leaving the image get similarity 0 (the valid-pixel mask is unfolded too).
    """
    B, _, h, w = lab.shape
    neighbours = unfold_neighbours(lab, size, dilation)
    sim = torch.exp(-0.5 * (lab[:, :, None] - neighbours).norm(dim=1))
    inside = unfold_neighbours(lab.new_ones(B, 1, h, w), size, dilation)[:, 0]
    return sim * inside


def pairwise_loss(
    mask_logits: torch.Tensor,
    similarity: torch.Tensor,
    box_masks: torch.Tensor,
    color_thresh: float,
    size: int,
    dilation: int,
) -> torch.Tensor:
    """-log P(same label) on similar-colour edges whose centre lies in the box.

    Args:
        mask_logits: (M, h, w) matched mask logits.
        similarity: (M, size^2-1, h, w) colour similarity of each pair's image.
        box_masks: (M, h, w) filled boxes at mask resolution.
        color_thresh: edges with similarity below it are ignored.

    Returns:
        scalar: mean over the kept edges of all pairs (0 with a grad path if none).
    """
    x = mask_logits[:, None]
    log_fg = F.logsigmoid(x)
    log_bg = F.logsigmoid(-x)
    nb_fg = unfold_neighbours(log_fg, size, dilation)[:, 0]
    nb_bg = unfold_neighbours(log_bg, size, dilation)[:, 0]
    log_same = torch.logaddexp(log_fg + nb_fg, log_bg + nb_bg)
    weight = (similarity >= color_thresh).float() * box_masks[:, None]
    return -(log_same * weight).sum() / weight.sum().clamp(min=1.0)
