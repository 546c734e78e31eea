"""DaTaSeg's training criterion: task-specific MERGE -> Hungarian matching -> losses."""

from ...tasks import TASKS
from .box_supervision import BoxSupervision
from .context import CriterionContext
from .criterion import MERGE_MATCHINGS, MergeCriterion, build_criterion
from .mask_supervision import MaskSupervision
from .matcher import HungarianMatcher
from .merge import (
    MERGE_MODES,
    MergeGroups,
    PointProbs,
    anchored_groups,
    group_by_class,
    merge_class_log_probs,
    merge_mask_logits,
    merge_mask_probs,
    mergeable_classes,
    scatter_logsumexp,
    singleton_groups,
)

__all__ = [
    "TASKS",
    "CriterionContext",
    "MergeCriterion",
    "MERGE_MATCHINGS",
    "MaskSupervision",
    "BoxSupervision",
    "build_criterion",
    "HungarianMatcher",
    "MERGE_MODES",
    "MergeGroups",
    "PointProbs",
    "anchored_groups",
    "group_by_class",
    "mergeable_classes",
    "scatter_logsumexp",
    "singleton_groups",
    "merge_class_log_probs",
    "merge_mask_logits",
    "merge_mask_probs",
]
