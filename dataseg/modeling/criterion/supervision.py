"""The interface between ``MergeCriterion`` and its supervisions, and the per-layer match record.

``MergeCriterion`` does what every task shares (MERGE, Hungarian matching, the class loss,
deep supervision, normalisation); what depends on the kind of ground truth is a
:class:`Supervision`: ``MaskSupervision`` (masks: panoptic, semantic, instance) and
``BoxSupervision`` (boxes). The task table (``dataseg.tasks``) says which one a task uses.
"""

import abc
from dataclasses import dataclass
from typing import Any, Dict, List

import torch

from .context import CriterionContext
from .matcher import HungarianMatcher
from .merge import MergeGroups

__all__ = ["LayerMatch", "Supervision"]


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


class Supervision(abc.ABC):
    """How one kind of ground truth prices and trains the (merged) mask proposals.

    For a batch, ``MergeCriterion`` calls :meth:`prepare` once, then for every supervised
    decoder layer :meth:`layer_state`, :meth:`cost_inputs` and, image by image,
    :meth:`image_cost` (the Hungarian matching), and finally :meth:`losses` of the layer's
    matched pairs.

    Attributes:
        target_key: the key every target dict must carry (``"masks"`` or ``"boxes"``).
    """

    target_key: str

    @abc.abstractmethod
    def prepare(self, outputs: Dict, targets: List[Dict], context: CriterionContext) -> Any:
        """Ground truth in the form this supervision compares, shared by every layer."""

    @abc.abstractmethod
    def layer_state(self, layer: Dict) -> Any:
        """What the layer's matching and losses both use (computed once, with grad), or None."""

    @abc.abstractmethod
    def cost_inputs(self, layer: Dict, state: Any, groups: MergeGroups, prep: Any) -> List:
        """The matching inputs of every image (no grad): entry ``b`` holds image ``b``'s units
        (``groups.image_offsets()``) and its ground truth."""

    @abc.abstractmethod
    def image_cost(self, matcher: HungarianMatcher, image_inputs: Any,
                   class_log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(U_b, K_b) matching cost of one image's units (``class_log_probs`` (U_b, C+1)) and
        its ground truth (``labels`` (K_b,))."""

    @abc.abstractmethod
    def losses(self, layer: Dict, state: Any, match: LayerMatch, targets: List[Dict], prep: Any,
               norm: torch.Tensor, context: CriterionContext) -> Dict[str, torch.Tensor]:
        """The weighted losses of the layer's matched pairs, divided by ``norm`` (the number
        of ground-truth segments); zero with a gradient path when nothing is matched."""
