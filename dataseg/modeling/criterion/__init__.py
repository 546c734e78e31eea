"""DaTaSeg's training criterion: task-specific MERGE -> Hungarian matching -> losses."""

from .context import TASKS, CriterionContext
from .criterion import MergeCriterion, build_criterion
from .matcher import HungarianMatcher
from .merge import (
    MERGE_MODES,
    MergedProposals,
    MergeGroups,
    PointProbs,
    box,
    build_merge,
    group_by_class,
    instance,
    merge_class_log_probs,
    merge_mask_logits,
    merge_mask_probs,
    merge_proposals,
    panoptic,
    semantic,
)

__all__ = [
    "TASKS",
    "CriterionContext",
    "MergeCriterion",
    "build_criterion",
    "HungarianMatcher",
    "MERGE_MODES",
    "MergedProposals",
    "MergeGroups",
    "PointProbs",
    "build_merge",
    "group_by_class",
    "merge_class_log_probs",
    "merge_mask_logits",
    "merge_mask_probs",
    "merge_proposals",
    "semantic",
    "panoptic",
    "instance",
    "box",
]
