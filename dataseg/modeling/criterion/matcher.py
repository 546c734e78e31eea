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

__all__ = ["HungarianMatcher", "focal_cost", "dice_cost", "class_cost", "focal_dice_cost_logits"]


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


def focal_dice_cost_logits(
    logits: torch.Tensor, gt_points: torch.Tensor, alpha: float, gamma: float,
    focal_weight: float = 1.0, dice_weight: float = 1.0,
) -> torch.Tensor:
    """``focal_weight * focal_cost + dice_weight * dice_cost`` of single proposals from their
    point LOGITS (U, P): (U, K).

    Equals the two costs of ``sigmoid_with_logs(logits)`` (tested) in about half the passes
    over the (U, P) points: ``-log p = softplus(-x)`` and ``-log(1 - p) = softplus(x)`` share
    one log, gamma 2 squares instead of ``pow``, and the weights and ``alpha`` are folded in
    before the one matmul that serves both costs' products with the targets.
    """
    p = torch.sigmoid(logits)
    q = 1.0 - p
    softplus_x = torch.maximum(p, q).log_().neg_().add_(logits.clamp(min=0.0))  # -log(1 - p)
    softplus_neg_x = softplus_x - logits  # -log p
    if gamma == 2.0:
        q.mul_(q)
        w_neg = p * p
    else:
        q.pow_(gamma)
        w_neg = p.pow(gamma)
    a_pos, a_neg = (alpha, 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)
    scale = focal_weight / logits.shape[-1]
    neg = w_neg.mul_(softplus_x).mul_(a_neg * scale)  # weighted focal loss of target 0
    # Per point: focal(t) = neg + t (pos - neg); dice needs p . t: one matmul for both.
    linear = q.mul_(softplus_neg_x).mul_(a_pos * scale).sub_(neg)
    both = torch.cat([linear, p], 0) @ gt_points.transpose(0, 1)
    U = logits.shape[0]
    cost = both[:U].add_(neg.sum(-1, keepdim=True))
    if dice_weight:
        denominator = p.sum(-1)[:, None] + gt_points.sum(-1)[None, :] + 1.0
        dice = (2.0 * both[U:] + 1.0).div_(denominator)
        cost.add_(dice_weight * (1.0 - dice))
    return cost


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
    def mask_cost_from_logits(
        self,
        class_log_probs: torch.Tensor,
        point_logits: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_points: torch.Tensor,
    ) -> torch.Tensor:
        """``mask_cost`` of single proposals given their point logits (U, P) (tested equal)."""
        with torch.autocast(gt_points.device.type, enabled=False):
            cost = self.cost_class * class_cost(class_log_probs.float(), gt_labels)
            if self.cost_focal or self.cost_dice:
                cost = cost + focal_dice_cost_logits(
                    point_logits.float(), gt_points.float(), self.focal_alpha,
                    self.focal_gamma, self.cost_focal, self.cost_dice)
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
