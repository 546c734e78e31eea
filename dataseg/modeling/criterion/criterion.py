"""``MergeCriterion``: task-specific MERGE -> Hungarian matching -> weighted losses.

The skeleton (this file) is shared by every task: MERGE, matching, the class loss, deep
supervision and normalisation. What depends on the kind of ground truth lives in two
``Supervision`` objects (``supervision.py``: ``MaskSupervision``, ``BoxSupervision``); the task
table (``dataseg.tasks``) says which one a dataset's task uses.
"""

from typing import Dict, List, Optional

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.utils import comm

from ...config import check_per_dataset_list
from ...tasks import get_task
from ..registry import CRITERION_REGISTRY
from .box_supervision import BoxSupervision
from .context import CriterionContext
from .losses import class_nll_loss
from .mask_supervision import MaskSupervision
from .matcher import HungarianMatcher
from .merge import anchored_groups, merge_class_log_probs, mergeable_classes, singleton_groups
from .merge_first_design import group_by_class
from .supervision import LayerMatch, Supervision

__all__ = ["MergeCriterion", "build_criterion", "MERGE_CHOICES"]

# Values of MODEL.DATASEG.CRITERION.MERGE:
#   "anchored": DaTaSeg's MERGE (``merge.py``): every segment gets an anchor proposal first,
#       same-class proposals join it, members' mask logits merge by log-sum-exp;
#   "none": the MERGE ablation, proposals matched one by one as in Mask2Former;
#   "first_design": the ablation of the first design (``merge_first_design.py``): proposals
#       grouped by argmax, units matched freely, clamped-sum masks.
MERGE_CHOICES = ("anchored", "none", "first_design")


@CRITERION_REGISTRY.register()
class MergeCriterion(nn.Module):
    """DaTaSeg's training criterion.

    For a batch from ONE dataset, every decoder layer's proposals are matched and merged by
    the task's MERGE rule (``dataseg.tasks``; by default ground-truth anchored, see
    ``merge.anchored_groups``), then given the losses:

    * every task: softmax cross-entropy over the dataset's classes + background (last,
      weight ``no_object_weight``), as NLL of each unit's class distribution (merged units:
      the mean of their members' softmaxes);
    * mask tasks: ``mask_supervision`` (focal + dice on importance-sampled points);
    * box tasks: ``box_supervision`` (projection dice [+ pairwise colour term]).

    Unmatched units (including every proposal of an image without annotations) get the
    background class one by one; mask / box losses then have no pairs and are 0 with a
    gradient path, so the key set per task is stable. Mask / box losses are divided by the
    number of ground-truth segments of the batch averaged over ranks (at least 1), the same
    for every layer.

    Returns a dict of ALREADY weighted losses: ``loss_ce`` + the supervision's keys, and the
    same with suffix ``_<i>`` for auxiliary decoder layer ``i`` when deep supervision is on.
    """

    @configurable
    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        mask_supervision: Optional[MaskSupervision] = None,
        box_supervision: Optional[BoxSupervision] = None,
        merge: str = "anchored",
        class_weight: float = 2.0,
        no_object_weight: float = 0.1,
        deep_supervision: bool = True,
        dataset_loss_weights: Optional[Dict[str, float]] = None,
    ):
        """
        Args:
            matcher: the Hungarian matcher (cost weights).
            mask_supervision: losses of mask tasks (default: ``MaskSupervision()``).
            box_supervision: losses of box tasks (default: ``BoxSupervision()``).
            merge: one of ``MERGE_CHOICES``: "anchored" (DaTaSeg's MERGE), "none" (every
                task's MERGE replaced by the identity, proposals matched one by one as in
                Mask2Former) or "first_design" (argmax units matched freely); the last two
                are ablations. The mask arithmetic of "first_design" is the mask
                supervision's (``first_merge_design``).
            class_weight: weight of the cross-entropy.
            no_object_weight: CE weight of the background class.
            deep_supervision: also match and supervise every ``outputs["aux_outputs"]`` layer.
            dataset_loss_weights: multiplier of every loss of a dataset, by dataset name
                (missing names: 1.0).
        """
        super().__init__()
        if merge not in MERGE_CHOICES:
            raise ValueError(
                f"MODEL.DATASEG.CRITERION.MERGE must be one of {MERGE_CHOICES}, got {merge!r}")
        self.matcher = matcher
        self.mask_supervision = mask_supervision or MaskSupervision()
        self.box_supervision = box_supervision or BoxSupervision()
        self.merge = merge
        self.class_weight = class_weight
        self.no_object_weight = no_object_weight
        self.deep_supervision = deep_supervision
        self.dataset_loss_weights = dict(dataset_loss_weights or {})

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.DATASEG.CRITERION
        matcher = HungarianMatcher(
            cost_class=c.COST_CLASS,
            cost_focal=c.COST_FOCAL,
            cost_dice=c.COST_DICE,
            cost_projection=c.COST_PROJECTION,
            focal_alpha=c.FOCAL_ALPHA,
            focal_gamma=c.FOCAL_GAMMA,
        )
        weights, train = list(c.DATASET_LOSS_WEIGHTS), list(cfg.DATASETS.TRAIN)
        check_per_dataset_list("MODEL.DATASEG.CRITERION.DATASET_LOSS_WEIGHTS", weights, train)
        return {
            "matcher": matcher,
            "mask_supervision": MaskSupervision(cfg),
            "box_supervision": BoxSupervision(cfg),
            "merge": c.MERGE,
            "class_weight": c.CLASS_WEIGHT,
            "no_object_weight": c.NO_OBJECT_WEIGHT,
            "deep_supervision": c.DEEP_SUPERVISION,
            "dataset_loss_weights": dict(zip(train, (float(w) for w in weights))),
        }

    def supervision(self, task: str) -> Supervision:
        """The supervision object of ``task`` (from the task table)."""
        return self.box_supervision if get_task(task).box_supervised else self.mask_supervision

    # --------------------------------------------------------------------------------------
    def forward(
        self, outputs: Dict, targets: List[Dict], context: CriterionContext
    ) -> Dict[str, torch.Tensor]:
        """The weighted losses (see the class docstring), float32 under mixed precision."""
        with _float32_region(outputs):
            return self._losses(_as_float32(outputs), targets, context)

    def _losses(self, outputs, targets, context):
        layers, suffixes, matches, states, prep = self._match_layers(outputs, targets, context)
        sup = self.supervision(context.task)
        device = outputs["pred_logits"].device
        # Mask2Former's normalisation: the number of ground-truth segments (boxes), averaged
        # over ranks, the same for every decoder layer whatever the MERGE made of its units.
        num_gt = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num_gt)
            num_gt = num_gt / comm.get_world_size()
        norm = num_gt.clamp(min=1.0)

        multiplier = self.dataset_loss_weights.get(context.dataset_name, 1.0)
        losses = {}
        for layer, suffix, match, state in zip(layers, suffixes, matches, states):
            layer_losses = sup.losses(layer, state, match, targets, prep, norm, context)
            layer_losses["loss_ce"] = self.class_weight * self._class_loss(match)
            for k, v in layer_losses.items():
                losses[k + suffix] = v * multiplier if multiplier != 1.0 else v
        return losses

    def match(self, outputs: Dict, targets: List[Dict], context: CriterionContext
              ) -> List[LayerMatch]:
        """The MERGE + matching of every supervised layer (final layer first), no losses."""
        with _float32_region(outputs):
            return self._match_layers(_as_float32(outputs), targets, context)[2]

    def _match_layers(self, outputs, targets, context):
        layers, suffixes = [outputs], [""]
        if self.deep_supervision:
            aux = outputs.get("aux_outputs", [])
            layers += list(aux)
            suffixes += [f"_{i}" for i in range(len(aux))]
        B, Q, C1 = outputs["pred_logits"].shape
        sup = self.supervision(context.task)
        self._check_targets(targets, B, C1 - 1, sup.target_key, context)
        device = outputs["pred_logits"].device
        mergeable = mergeable_classes(context.task, context.is_thing, C1 - 1, device)
        if self.merge == "none":
            mergeable = torch.zeros_like(mergeable)
        merging = bool(mergeable.any())
        if merging and get_task(context.task).box_supervised:
            raise ValueError(f"Task {context.task!r} is box-supervised; its MERGE must not merge.")

        prep = sup.prepare(outputs, targets, context)  # ground truth shared by all layers
        matches, states = [], []
        for layer in layers:
            state = sup.layer_state(layer)
            if merging and self.merge == "first_design":
                match = self._hungarian(layer, group_by_class(layer["pred_logits"], mergeable),
                                        targets, sup, state, prep)
            else:
                match = self._hungarian(layer, singleton_groups(B, Q, device), targets, sup,
                                        state, prep)
                if merging:
                    match = self._anchored_match(layer, match, targets, mergeable)
            matches.append(match)
            states.append(state)
        return layers, suffixes, matches, states, prep

    # --------------------------------------------------------------------------------------
    @staticmethod
    def _check_targets(targets, B, C, key, context):
        if len(targets) != B:
            raise ValueError(f"Got {len(targets)} targets for a batch of {B} images.")
        for i, t in enumerate(targets):
            if t.get(key) is None:
                raise ValueError(
                    f"Task {context.task!r} of dataset {context.dataset_name!r} needs target "
                    f"'{key}', but image {i} has none."
                )
            labels = t["labels"]
            if labels.numel() and (int(labels.max()) >= C or int(labels.min()) < 0):
                raise ValueError(
                    f"Target labels of image {i} lie outside 0..{C - 1} (the vocabulary of "
                    f"{context.dataset_name!r}); the logits have {C} classes + background."
                )

    def _hungarian(self, layer, groups, targets, sup, state, prep) -> LayerMatch:
        """One-to-one matching of the units of ``groups`` to each image's ground truth."""
        logits = layer["pred_logits"]
        B, Q, C1 = logits.shape
        class_logp = merge_class_log_probs(
            logits.reshape(B * Q, C1), groups.unit_of_query, groups.num_units
        )
        offsets = groups.image_offsets()
        with torch.no_grad():
            clp = class_logp.detach()
            inputs = sup.cost_inputs(layer, state, groups, prep)
            unit_idx, gt_idx, gt_labels, pair_image, per_image = [], [], [], [], []
            for b, (t, image_inputs) in enumerate(zip(targets, inputs)):
                s, e = offsets[b], offsets[b + 1]
                labels = t["labels"].to(logits.device)
                if labels.numel() == 0 or e == s:
                    per_image.append(0)
                    continue
                cost = sup.image_cost(self.matcher, image_inputs, clp[s:e], labels)
                rows, cols = self.matcher.assign(cost)
                unit_idx.append(rows + s)
                gt_idx.append(cols)
                gt_labels.append(labels[cols])
                pair_image.append(torch.full_like(rows, b))
                per_image.append(rows.numel())
        empty = torch.zeros(0, dtype=torch.long, device=logits.device)
        cat = lambda xs: torch.cat(xs) if xs else empty  # noqa: E731
        return LayerMatch(groups, class_logp, cat(unit_idx), cat(gt_idx), cat(gt_labels),
                          cat(pair_image), per_image)

    @staticmethod
    def _anchored_match(layer, anchors: LayerMatch, targets, mergeable) -> LayerMatch:
        """Turn a one-by-one match (the anchors) into the ground-truth-anchored MERGE."""
        logits = layer["pred_logits"]
        B, Q, C1 = logits.shape
        rows = anchors.unit_idx - anchors.pair_image * Q  # query index within the image
        split = lambda v: list(torch.split(v, anchors.pairs_per_image))  # noqa: E731
        labels = [t["labels"].to(logits.device) for t in targets]
        groups, unit_idx, gt_idx = anchored_groups(
            logits, mergeable, split(rows), split(anchors.gt_idx), labels)
        # Class: the mean of the members' softmaxes, as in the first design (a unit's class
        # gradient is one proposal's, shared by the members that carry the class).
        class_logp = merge_class_log_probs(
            logits.reshape(B * Q, C1), groups.unit_of_query, groups.num_units)
        return LayerMatch(groups, class_logp, unit_idx, gt_idx, anchors.gt_labels,
                          anchors.pair_image, anchors.pairs_per_image)

    def _class_loss(self, match: LayerMatch) -> torch.Tensor:
        num_classes = match.class_log_probs.shape[-1] - 1
        target = torch.full(
            (match.groups.num_units,), num_classes, dtype=torch.long,
            device=match.class_log_probs.device,
        )
        target[match.unit_idx] = match.gt_labels
        return class_nll_loss(match.class_log_probs, target, self.no_object_weight)


def _float32_region(outputs):
    # Mixed precision (SOLVER.AMP.ENABLED): autocast would run the matching-cost matmuls
    # (focal / dice over thousands of points) and other reductions in float16 / bfloat16,
    # whose 8-11 bit mantissas moved costs by up to 0.03 (tests/engine/test_amp.py) and can flip
    # assignments; the criterion is cheap next to the model, so all of it runs in float32
    # with autocast off.
    return torch.autocast(outputs["pred_logits"].device.type, enabled=False)


def _as_float32(x):
    """``x`` (nested dicts / lists of tensors) with floating tensors cast to float32; the
    casts are differentiable, so gradients reach the half-precision predictions."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _as_float32(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_as_float32(v) for v in x)
    return x


def build_criterion(cfg) -> nn.Module:
    """Build the criterion named by ``MODEL.DATASEG.CRITERION.NAME``."""
    return CRITERION_REGISTRY.get(cfg.MODEL.DATASEG.CRITERION.NAME)(cfg)
