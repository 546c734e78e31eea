"""Per-pair mask and class losses in probability space (so merged units can use them).

Merged units only exist as probabilities, so every loss here takes probabilities and their
logs (``PointProbs``) rather than logits. For single-proposal units the logs are the exact
``logsigmoid`` / ``log_softmax`` of the logits (see ``merge.py``), so the values and gradients
equal the usual logits losses (fvcore's ``sigmoid_focal_loss``, ``F.cross_entropy``).
"""

from typing import Optional

import torch
from torch.nn import functional as F

from .merge import PointProbs

__all__ = ["focal_loss", "dice_loss", "class_nll_loss"]


def focal_loss(
    pred: PointProbs, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.) on probabilities, mean over points, per unit.

    Args:
        pred: (M, P) probabilities and logs.
        targets: (M, P) targets in [0, 1].
        alpha: weight of positives (negatives get 1 - alpha); < 0 disables weighting.
        gamma: focusing exponent.

    Returns:
        (M,) loss of each unit.
    """
    p = pred.prob
    ce = -(targets * pred.log_prob + (1.0 - targets) * pred.log_one_minus_prob)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    # clamp: the straight-through merged probability may exceed 1 by a rounding error.
    loss = ce * (1.0 - p_t).clamp(min=0.0) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss.mean(-1)


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
