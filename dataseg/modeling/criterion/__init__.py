"""DaTaSeg's training criterion: task-specific MERGE -> Hungarian matching -> losses."""

from ...tasks import TASKS
from .box_supervision import BoxSupervision
from .context import CriterionContext
from .criterion import MERGE_CHOICES, MergeCriterion, build_criterion
from .mask_supervision import MaskSupervision
from .matcher import HungarianMatcher
from .merge import (
    MergeGroups,
    PointProbs,
    anchored_groups,
    groups_from_units,
    merge_class_log_probs,
    merge_mask_logits,
    mergeable_classes,
    scatter_logsumexp,
    singleton_groups,
)
from .supervision import LayerMatch, Supervision

__all__ = [
    "TASKS",
    "CriterionContext",
    "MergeCriterion",
    "MERGE_CHOICES",
    "Supervision",
    "LayerMatch",
    "MaskSupervision",
    "BoxSupervision",
    "build_criterion",
    "HungarianMatcher",
    "MergeGroups",
    "PointProbs",
    "anchored_groups",
    "groups_from_units",
    "mergeable_classes",
    "scatter_logsumexp",
    "singleton_groups",
    "merge_class_log_probs",
    "merge_mask_logits",
]
