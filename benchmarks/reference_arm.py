"""The reference arm of ``compare_reference.py``: the same architecture, plain computations.

The reference is what the architecture costs when written the straightforward way, as
Mask2Former's pure-PyTorch CPU path does: every CPU fast path of DaTaSeg is switched to the
plain computation it is pinned to by the tests, and the criterion is a Mask2Former-style
set criterion without MERGE:

* ``MODEL.DATASEG.FAST_PATHS "off"``: standard 1x1 convolutions in the backbone and pixel
  decoder, one ``F.grid_sample`` per level for deformable attention, encoder FFN activations
  kept for backward, ``nn.MultiheadAttention`` with its per-head boolean mask in the query
  decoder (dataseg/modeling/fast_paths lists them);
* criterion: :class:`ReferenceCriterion` (per-image Hungarian matching on points read by
  detectron2's ``point_sample`` from float copies of the masks, losses on points from
  ``get_uncertain_point_coords_with_randomness``, fvcore's ``sigmoid_focal_loss`` and the
  plain dice formula), or Mask2Former's own ``SetCriterion`` from a checkout
  (:func:`checkout_criterion`);
* glibc's allocator defaults (``tune_malloc`` applies to the fast paths only).

Post-processing and the text classifier are the project's in both arms (they are ~5 % of
inference at 512x512).
"""

import importlib
import os
import sys
import types
from typing import Dict, List

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.nn import functional as F

from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from fvcore.nn import sigmoid_focal_loss

__all__ = [
    "REFERENCE_OPTS",
    "ReferenceCriterion",
    "checkout_criterion",
    "apply_reference",
]

# The plain computations (every fast path is pinned to its plain computation by a test).
REFERENCE_OPTS = ["MODEL.DATASEG.FAST_PATHS", "off"]

# ------------------------------------------------------------------------------------------
# Criterion
# ------------------------------------------------------------------------------------------


def _batch_focal_cost(logits, targets, alpha, gamma):
    """Mean focal loss over points of every (prediction, target) pair: (N, K)."""
    prob = logits.sigmoid()
    pos = (1 - prob) ** gamma * F.binary_cross_entropy_with_logits(
        logits, torch.ones_like(logits), reduction="none")
    neg = prob ** gamma * F.binary_cross_entropy_with_logits(
        logits, torch.zeros_like(logits), reduction="none")
    if alpha >= 0:
        pos, neg = pos * alpha, neg * (1 - alpha)
    cost = torch.einsum("np,kp->nk", pos, targets) + torch.einsum("np,kp->nk", neg, 1 - targets)
    return cost / logits.shape[1]


def _batch_dice_cost(logits, targets):
    prob = logits.sigmoid()
    numerator = 2 * torch.einsum("np,kp->nk", prob, targets)
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def _uncertainty(logits):
    return -logits.abs()


class ReferenceCriterion(nn.Module):
    """A Mask2Former-style set criterion with DaTaSeg's losses and weights, no MERGE.

    The layout (per-image matcher, ``loss_labels`` / ``loss_masks`` over every decoder layer,
    normalisation by the number of ground-truth masks) follows Mask2Former's
    ``SetCriterion`` and ``HungarianMatcher``; the arithmetic is written from the formulas
    with detectron2's point sampling and fvcore's focal loss. Its losses equal
    ``MergeCriterion``'s with ``MERGE_ENABLED False`` (tested on inputs where the point
    sampling cannot matter); keys are ``loss_ce``, ``loss_focal``, ``loss_dice`` (+ ``_i``).
    """

    def __init__(self, cfg):
        super().__init__()
        c = cfg.MODEL.DATASEG.CRITERION
        self.num_points = c.TRAIN_NUM_POINTS
        self.oversample_ratio = c.OVERSAMPLE_RATIO
        self.importance_sample_ratio = c.IMPORTANCE_SAMPLE_RATIO
        self.alpha, self.gamma = c.FOCAL_ALPHA, c.FOCAL_GAMMA
        self.weights = {"loss_ce": c.CLASS_WEIGHT, "loss_focal": c.FOCAL_WEIGHT,
                        "loss_dice": c.DICE_WEIGHT}
        self.costs = (c.COST_CLASS, c.COST_FOCAL, c.COST_DICE)
        self.no_object_weight = c.NO_OBJECT_WEIGHT
        self.deep_supervision = c.DEEP_SUPERVISION

    @torch.no_grad()
    def match(self, layer, targets) -> List:
        out = []
        for b, t in enumerate(targets):
            prob = layer["pred_logits"][b].softmax(-1)
            cost_class = -prob[:, t["labels"]]
            coords = torch.rand(1, self.num_points, 2, device=prob.device)
            tgt = point_sample(t["masks"][:, None].float(), coords.repeat(len(t["masks"]), 1, 1),
                               align_corners=False).squeeze(1)
            pred = layer["pred_masks"][b][:, None].float()
            pred = point_sample(pred, coords.repeat(pred.shape[0], 1, 1),
                                align_corners=False).squeeze(1)
            w_class, w_focal, w_dice = self.costs
            cost = (w_class * cost_class + w_focal * _batch_focal_cost(pred, tgt, self.alpha,
                                                                       self.gamma)
                    + w_dice * _batch_dice_cost(pred, tgt))
            rows, cols = linear_sum_assignment(cost.cpu())
            out.append((torch.as_tensor(rows, dtype=torch.long),
                        torch.as_tensor(cols, dtype=torch.long)))
        return out

    def _layer_losses(self, layer, targets, indices, num_masks) -> Dict[str, torch.Tensor]:
        logits = layer["pred_logits"].float()
        B, Q, C1 = logits.shape
        batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        target_classes = torch.full((B, Q), C1 - 1, dtype=torch.long, device=logits.device)
        target_classes[batch_idx, src_idx] = torch.cat(
            [t["labels"][j] for t, (_, j) in zip(targets, indices)])
        weight = torch.ones(C1, device=logits.device)
        weight[-1] = self.no_object_weight
        losses = {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, weight)}
        src_masks = layer["pred_masks"][batch_idx, src_idx][:, None].float()
        target_masks = torch.cat([t["masks"][j] for t, (_, j) in zip(targets, indices)])
        target_masks = target_masks[:, None].float()
        with torch.no_grad():
            coords = get_uncertain_point_coords_with_randomness(
                src_masks, _uncertainty, self.num_points, self.oversample_ratio,
                self.importance_sample_ratio)
            labels = point_sample(target_masks, coords, align_corners=False).squeeze(1)
        point_logits = point_sample(src_masks, coords, align_corners=False).squeeze(1)
        focal = sigmoid_focal_loss(point_logits, labels, self.alpha, self.gamma, "none")
        losses["loss_focal"] = focal.mean(1).sum() / num_masks
        prob = point_logits.sigmoid()
        dice = 1 - (2 * (prob * labels).sum(-1) + 1) / (prob.sum(-1) + labels.sum(-1) + 1)
        losses["loss_dice"] = dice.sum() / num_masks
        return {k: v * self.weights[k] for k, v in losses.items()}

    def forward(self, outputs, targets, context=None) -> Dict[str, torch.Tensor]:
        layers = [outputs] + (list(outputs.get("aux_outputs", [])) if self.deep_supervision
                              else [])
        num_masks = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        losses = {}
        for i, layer in enumerate(layers):
            suffix = "" if i == 0 else f"_{i - 1}"
            for k, v in self._layer_losses(layer, targets, self.match(layer, targets),
                                           num_masks).items():
                losses[k + suffix] = v
        return losses


def _import_from_checkout(repo: str, module: str):
    """Import ``mask2former.<module>`` from a checkout without running the package's
    ``__init__`` (which imports the compiled deformable-attention op, absent on CPU)."""
    root = os.path.join(os.path.abspath(repo), "mask2former")
    if not os.path.isfile(os.path.join(root, "modeling", "criterion.py")):
        raise FileNotFoundError(
            f"--reference-repo {repo!r} is not a Mask2Former checkout: "
            f"{os.path.join(root, 'modeling', 'criterion.py')} does not exist. Pass the folder "
            "that contains mask2former/ (a clone of facebookresearch/Mask2Former).")
    for name, path in (("mask2former", root), ("mask2former.modeling",
                                                os.path.join(root, "modeling"))):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package
    return importlib.import_module(f"mask2former.{module}")


class _CheckoutCriterion(nn.Module):
    """Mask2Former's ``SetCriterion`` called with DaTaSeg's ``(outputs, targets, context)``."""

    def __init__(self, criterion):
        super().__init__()
        self.criterion = criterion

    def forward(self, outputs, targets, context=None):
        losses = self.criterion(outputs, targets)
        weights = self.criterion.weight_dict
        return {k: v * weights[k] for k, v in losses.items() if k in weights}


def checkout_criterion(repo: str, cfg, num_classes: int) -> nn.Module:
    """Mask2Former's own ``SetCriterion`` + ``HungarianMatcher`` from a checkout at ``repo``.

    Mask2Former's mask loss is sigmoid cross-entropy (not focal); weights and point counts
    are DaTaSeg's config values.
    """
    criterion_mod = _import_from_checkout(repo, "modeling.criterion")
    matcher_mod = _import_from_checkout(repo, "modeling.matcher")
    c = cfg.MODEL.DATASEG.CRITERION
    matcher = matcher_mod.HungarianMatcher(
        cost_class=c.COST_CLASS, cost_mask=c.COST_FOCAL, cost_dice=c.COST_DICE,
        num_points=c.TRAIN_NUM_POINTS)
    weight_dict = {"loss_ce": c.CLASS_WEIGHT, "loss_mask": c.FOCAL_WEIGHT,
                   "loss_dice": c.DICE_WEIGHT}
    for i in range(cfg.MODEL.DATASEG.DECODER.NUM_LAYERS):
        weight_dict.update({f"{k}_{i}": v for k, v in list(weight_dict.items())[:3]})
    criterion = criterion_mod.SetCriterion(
        num_classes, matcher=matcher, weight_dict=weight_dict, eos_coef=c.NO_OBJECT_WEIGHT,
        losses=["labels", "masks"], num_points=c.TRAIN_NUM_POINTS,
        oversample_ratio=c.OVERSAMPLE_RATIO, importance_sample_ratio=c.IMPORTANCE_SAMPLE_RATIO)
    return _CheckoutCriterion(criterion)


def apply_reference(model, cfg, num_classes: int, reference_repo: str = ""):
    """Swap the model's criterion for the reference one (in place); returns the model.

    ``cfg`` must already carry ``REFERENCE_OPTS`` (the model's plain computations).
    """
    model.criterion = (checkout_criterion(reference_repo, cfg, num_classes) if reference_repo
                       else ReferenceCriterion(cfg))
    return model
