"""Hungarian matching of (merged) units to ground-truth segments or boxes.

Costs are all-pairs matrices built with matmuls on shared sampled points (no loop over
segments), in float32 (autocast off, inputs cast), then solved per image with scipy's
``linear_sum_assignment``.
"""

from typing import Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .box_losses import projection_cost
from .merge import PointProbs

__all__ = ["HungarianMatcher", "focal_cost", "dice_cost", "class_cost"]


def class_cost(class_log_probs: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
    """-p(gt class) for every (unit, gt) pair: (U, K)."""
    return -class_log_probs.exp()[:, gt_labels]


def focal_cost(
    pred: PointProbs, gt_points: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Mean focal loss over points for every (unit, gt) pair: (U, K).

    The per-point loss is linear in the target, so all pairs are one matmul:
    ``pos @ t^T + neg @ (1 - t)^T``.
    """
    p = pred.prob.clamp(0.0, 1.0)
    pos = -pred.log_prob * (1.0 - p) ** gamma
    neg = -pred.log_one_minus_prob * p ** gamma
    if alpha >= 0:
        pos = pos * alpha
        neg = neg * (1.0 - alpha)
    num_points = p.shape[-1]
    cost = (pos - neg) @ gt_points.transpose(0, 1) + neg.sum(-1, keepdim=True)
    return cost / num_points


def dice_cost(probs: torch.Tensor, gt_points: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 - (2|pt| + 1) / (|p| + |t| + 1)`` for every (unit, gt) pair: (U, K)."""
    numerator = 2.0 * (probs @ gt_points.transpose(0, 1)) + 1.0
    denominator = probs.sum(-1)[:, None] + gt_points.sum(-1)[None, :] + 1.0
    return 1.0 - numerator / denominator


class HungarianMatcher:
    """One-to-one assignment of units to ground truth minimising a weighted cost.

    Args:
        cost_class: weight of ``-p(gt class)``.
        cost_focal: weight of the point-sampled focal cost (mask tasks).
        cost_dice: weight of the point-sampled dice cost (mask tasks).
        cost_projection: weight of the box projection dice cost (box task).
        focal_alpha, focal_gamma: focal parameters of the cost.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_focal: float = 20.0,
        cost_dice: float = 5.0,
        cost_projection: float = 5.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        self.cost_class = cost_class
        self.cost_focal = cost_focal
        self.cost_dice = cost_dice
        self.cost_projection = cost_projection
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def mask_cost(
        self,
        class_log_probs: torch.Tensor,
        pred: PointProbs,
        gt_labels: torch.Tensor,
        gt_points: torch.Tensor,
    ) -> torch.Tensor:
        """Cost (U, K) of units vs ground-truth masks sampled at the same points."""
        with torch.autocast(gt_points.device.type, enabled=False):
            cost = self.cost_class * class_cost(class_log_probs.float(), gt_labels)
            gt_points = gt_points.float()
            if self.cost_focal:
                cost = cost + self.cost_focal * focal_cost(
                    PointProbs(*(v.float() for v in pred)), gt_points, self.focal_alpha,
                    self.focal_gamma)
            if self.cost_dice:
                cost = cost + self.cost_dice * dice_cost(pred.prob.float(), gt_points)
        return cost

    @torch.no_grad()
    def box_cost(
        self,
        class_log_probs: torch.Tensor,
        proj_x: torch.Tensor,
        proj_y: torch.Tensor,
        gt_labels: torch.Tensor,
        box_x: torch.Tensor,
        box_y: torch.Tensor,
    ) -> torch.Tensor:
        """Cost (U, K) of units vs ground-truth boxes: class + projection dice (x + y)."""
        with torch.autocast(proj_x.device.type, enabled=False):
            cost = self.cost_class * class_cost(class_log_probs.float(), gt_labels)
            return cost + self.cost_projection * projection_cost(
                proj_x.float(), proj_y.float(), box_x.float(), box_y.float()
            )

    @staticmethod
    def assign(cost: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Solve the assignment. Returns (unit indices, gt indices), int64, on cost's device.

        An empty side gives empty indices; non-finite costs (e.g. from a diverged model) are
        replaced so the solver never raises.
        """
        U, K = cost.shape
        if U == 0 or K == 0:
            empty = torch.zeros(0, dtype=torch.long, device=cost.device)
            return empty, empty
        c = torch.nan_to_num(cost.float(), nan=1e6, posinf=1e6, neginf=-1e6).cpu().numpy()
        rows, cols = linear_sum_assignment(c)
        return (
            torch.as_tensor(rows.astype(np.int64), device=cost.device),
            torch.as_tensor(cols.astype(np.int64), device=cost.device),
        )
