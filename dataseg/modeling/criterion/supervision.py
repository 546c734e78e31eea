"""What ``MergeCriterion`` shares with its two supervisions: the per-layer match record."""

from dataclasses import dataclass
from typing import List

import torch

from .merge import MergeGroups

__all__ = ["LayerMatch"]


@dataclass
class LayerMatch:
    """Matching result of one decoder layer (units of all images, pairs ordered by image).

    Attributes:
        groups: which proposals form each unit (a merged segment or one proposal).
        class_log_probs: (U, C+1) class log-probabilities of the units, with grad.
        unit_idx: (M,) global unit id of each matched pair.
        gt_idx: (M,) ground-truth index within its image.
        gt_labels: (M,) class of the matched ground truth.
        pair_image: (M,) image of each pair.
        pairs_per_image: number of pairs of each image.
    """

    groups: MergeGroups
    class_log_probs: torch.Tensor
    unit_idx: torch.Tensor
    gt_idx: torch.Tensor
    gt_labels: torch.Tensor
    pair_image: torch.Tensor
    pairs_per_image: List[int]
