"""Readable references that the criterion's fast paths are tested against.

They are not part of the package: the criterion merges on sampled points and fuses its point
losses; these apply a MERGE to whole masks and write the focal loss out element by element,
so tests can check the meaning directly.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from dataseg.modeling.criterion import (
    MergeGroups,
    PointProbs,
    group_by_class,
    merge_class_log_probs,
    merge_mask_probs,
    mergeable_classes,
    scatter_logsumexp,
)
from dataseg.tasks import get_task


def build_merge(task: str):
    """The argmax grouping of ``task``: ``fn(pred_logits, is_thing) -> MergeGroups``.

    Groups proposals by predicted class under the task's MERGE rule, from the predictions
    alone (the criterion anchors units on the ground truth instead).
    """
    def merge(pred_logits: torch.Tensor, is_thing: Optional[torch.Tensor] = None):
        C = pred_logits.shape[-1] - 1
        return group_by_class(pred_logits,
                              mergeable_classes(task, is_thing, C, pred_logits.device))

    get_task(task)  # an unknown task fails here, naming the known ones
    return merge


@dataclass
class MergedProposals:
    """Full-resolution result of a MERGE, in probability space.

    Attributes:
        class_probs: (U, C+1) merged class distributions.
        mask_probs: (U, H, W) merged mask probabilities.
        groups: the ``MergeGroups`` that produced them.
    """

    class_probs: torch.Tensor
    mask_probs: torch.Tensor
    groups: MergeGroups


def merge_proposals(pred_logits: torch.Tensor, pred_masks: torch.Tensor, task: str,
                    is_thing: Optional[torch.Tensor] = None, mode: str = "logsumexp"
                    ) -> MergedProposals:
    """Apply the task's MERGE to (B, Q, C+1) logits and (B, Q, H, W) mask logits.

    Units of all images are concatenated; image ``b``'s units are
    ``groups.image_offsets()[b]:groups.image_offsets()[b+1]``.
    """
    groups = build_merge(task)(pred_logits, is_thing)
    B, Q, C1 = pred_logits.shape
    class_probs = merge_class_log_probs(
        pred_logits.reshape(B * Q, C1), groups.unit_of_query, groups.num_units).exp()
    masks = pred_masks.float().flatten(0, 1)
    if mode == "logsumexp":
        mask_probs = torch.sigmoid(scatter_logsumexp(masks, groups.unit_of_query,
                                                     groups.num_units))
    else:
        mask_probs = merge_mask_probs(torch.sigmoid(masks), groups.unit_of_query,
                                      groups.num_units, mode)
    return MergedProposals(class_probs, mask_probs, groups)


def focal_loss_reference(
    pred: PointProbs, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """The straightforward elementwise focal loss (the definition ``focal_loss`` follows)."""
    p = pred.prob
    ce = -(targets * pred.log_prob + (1.0 - targets) * pred.log_one_minus_prob)
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    # clamp: the straight-through merged probability may exceed 1 by a rounding error.
    loss = ce * (1.0 - p_t).clamp(min=0.0) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss.mean(-1)
