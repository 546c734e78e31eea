"""Per-pair mask and class losses, written out.

The mask losses take probabilities and their logs (``PointProbs``), so merged units of the
first MERGE design (which exist only as probabilities) use them too. For single-proposal
units the logs are the exact ``logsigmoid`` / ``log_softmax`` of the logits (``merge.py``), so
the values and gradients equal the usual logits losses (fvcore's ``sigmoid_focal_loss``,
``F.cross_entropy``). With ``fast=True`` (``MODEL.DATASEG.FAST_PATHS`` on CPU) the same
losses run as the fused autograd functions of ``fast_paths.point_losses``.
"""

from typing import Optional

import torch
from torch.nn import functional as F

from ..fast_paths.point_losses import fused_focal_loss, fused_sigmoid_focal_dice_loss
from .merge import PointProbs, sigmoid_with_logs

__all__ = [
    "focal_loss",
    "sigmoid_focal_dice_loss",
    "dice_loss",
    "class_nll_loss",
]


def focal_loss(
    pred: PointProbs, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
    fast: bool = False,
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.) on probabilities, mean over points, per unit.

    ``ce * (1 - p_t) ** gamma * alpha_t`` with ``ce = -(t log p + (1 - t) log(1 - p))`` and
    ``p_t = p t + (1 - p)(1 - t)``.

    Args:
        pred: (M, P) probabilities and logs.
        targets: (M, P) targets in [0, 1].
        alpha: weight of positives (negatives get 1 - alpha); < 0 disables weighting.
        gamma: focusing exponent.
        fast: run ``fast_paths.point_losses.fused_focal_loss`` (same values, less memory).

    Returns:
        (M,) loss of each unit.
    """
    t = targets.to(pred.prob.dtype)
    if fast:
        return fused_focal_loss(pred.prob, pred.log_prob, pred.log_one_minus_prob, t,
                                alpha, gamma)
    p = pred.prob
    ce = -(t * pred.log_prob + (1.0 - t) * pred.log_one_minus_prob)
    p_t = p * t + (1.0 - p) * (1.0 - t)
    # clamp: the straight-through merged probability may exceed 1 by a rounding error.
    loss = ce * (1.0 - p_t).clamp(min=0.0) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1.0 - alpha) * (1.0 - t))
    return loss.mean(-1)


def sigmoid_focal_dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0,
    fast: bool = False,
):
    """Focal (mean over points) and dice losses per row of point LOGITS: two (M,) tensors.

    ``focal_loss`` and ``dice_loss`` of ``sigmoid_with_logs(logits)``, for units that are one
    proposal (or merged logits).

    Args:
        logits: (M, P) mask logits at the sampled points.
        targets: (M, P) targets in [0, 1] (float, uint8 or bool).
        alpha, gamma: focal parameters (alpha < 0 disables weighting).
        fast: run ``fast_paths.point_losses.fused_sigmoid_focal_dice_loss``, which keeps
            only the logits and the (byte) targets for backward.
    """
    if fast:
        return fused_sigmoid_focal_dice_loss(logits, targets, alpha, gamma)
    pred = PointProbs(*sigmoid_with_logs(logits))
    t = targets.to(logits.dtype)
    return focal_loss(pred, t, alpha, gamma), dice_loss(pred.prob, t)


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 - (2|p t| + 1) / (|p| + |t| + 1)`` per unit over the last dim: (M,)."""
    numerator = 2.0 * (probs * targets).sum(-1) + 1.0
    denominator = probs.sum(-1) + targets.sum(-1) + 1.0
    return 1.0 - numerator / denominator


def class_nll_loss(
    log_probs: torch.Tensor, target_classes: torch.Tensor, no_object_weight: float
) -> torch.Tensor:
    """Softmax cross-entropy as NLL of (possibly merged) class log-probabilities.

    The background (last column) has weight ``no_object_weight``; the result is the weighted
    mean over units, as ``F.cross_entropy(weight=...)`` computes it.

    Args:
        log_probs: (N, C+1) log class probabilities of all units of the batch.
        target_classes: int64 (N,) matched label or C (background).
        no_object_weight: background class weight.
    """
    weight: Optional[torch.Tensor] = torch.ones(log_probs.shape[-1], device=log_probs.device)
    weight[-1] = no_object_weight
    return F.nll_loss(log_probs, target_classes, weight=weight)
