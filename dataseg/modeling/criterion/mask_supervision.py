"""Mask supervision of ``MergeCriterion``: focal + dice on importance-sampled points.

Used for every task whose ground truth is masks (panoptic, semantic, instance). Merged units
combine their members' point logits with the MERGE arithmetic (``merge.py``; the first
design's, ``merge_first_design.py``, in the MERGE ablation).
"""

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional

import torch

from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)

from ..fast_paths import check_fast_paths, use_fast_paths
from ..fast_paths.grid_point_sampler import (
    PixelPoints,
    sample_logits_at_pixels,
    sample_uncertain_pixels,
)
from .losses import dice_loss, focal_loss, sigmoid_focal_dice_loss
from .merge import MergeGroups, PointProbs, merge_mask_logits, scatter_logsumexp
from .merge_first_design import clamped_sum_logits, clamped_sum_probs
from .point_sampling import read_mask_pixels, sample_binary_masks, sample_shared_points
from .supervision import LayerMatch, Supervision

__all__ = ["MaskSupervision"]


def _uncertainty(probs: torch.Tensor) -> torch.Tensor:
    # Most uncertain where the (merged) probability is closest to 0.5.
    return -(probs - 0.5).abs()


def _logit_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    # Same order as ``_uncertainty`` of sigmoid(logits), without the sigmoid.
    return logits.abs().neg_()


@dataclass
class _MaskTargets:
    """Matching points shared by all layers and every image's ground truth at them."""

    coords: torch.Tensor  # (P, 2) in [0, 1]
    gt_points: List[torch.Tensor]  # per image (K_b, P)


class _ImageCostInputs(NamedTuple):
    """One image's matching inputs: its units at the matching points, either as point
    logits (U_b, P) when every unit is one proposal, or as merged ``PointProbs``; and its
    ground truth at the same points (K_b, P)."""

    unit_logits: Optional[torch.Tensor]
    unit_probs: Optional[PointProbs]
    gt_points: torch.Tensor


@dataclass
class _LossPoints:
    """The loss points of M pairs: continuous points, or ground-truth pixels (fast path)."""

    pixels: Optional[PixelPoints] = None
    coords: Optional[torch.Tensor] = None  # (M, P, 2) in [0, 1]

    def sample(self, member_logits: torch.Tensor, member_pair: Optional[torch.Tensor]):
        """Bilinear reads (with gradient) of each member's logits at its pair's points."""
        if self.pixels is not None:
            return sample_logits_at_pixels(member_logits, self.pixels, member_pair)
        coords = self.coords if member_pair is None else self.coords[member_pair]
        return point_sample(member_logits[:, None], coords, align_corners=False)[:, 0]


class MaskSupervision(Supervision):
    """Focal + dice supervision of (merged) mask proposals by ground-truth masks.

    Matching costs use ``num_points`` random points shared by all units and layers; losses
    use PointRend importance sampling per matched pair, as Mask2Former does. The CPU fast
    paths (``fast_paths``) place the loss points on ground-truth pixel centres
    (``fast_paths.grid_point_sampler``), read the ground truth at the nearest pixel and run
    the fused point losses (``fast_paths.point_losses``).
    """

    target_key = "masks"

    @configurable
    def __init__(
        self,
        *,
        first_merge_design: bool = False,
        focal_weight: float = 20.0,
        dice_weight: float = 5.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        fast_paths: str = "off",
    ):
        """
        Args:
            first_merge_design: merge units with the first design's clamped sum
                (``merge_first_design.py``) instead of DaTaSeg's log-sum-exp: the MERGE
                ablation only.
            focal_weight, dice_weight: loss weights.
            focal_alpha, focal_gamma: focal loss parameters (alpha < 0 and gamma 0: BCE).
            num_points, oversample_ratio, importance_sample_ratio: point sampling of the mask
                losses (PointRend importance sampling); ``num_points`` shared points also
                estimate the matching cost.
            fast_paths: ``MODEL.DATASEG.FAST_PATHS``. Plain (Mask2Former): loss points from
                ``get_uncertain_point_coords_with_randomness``, ground-truth masks (4x the
                prediction resolution) read bilinearly at continuous points (=
                ``point_sample`` of the float masks). "auto" on CPU: loss points at
                ground-truth pixel centres (``sample_uncertain_pixels``: the same uncertain
                region, several times faster), ground truth read at the nearest pixel (one
                byte per point, 4x cheaper) and the fused point losses.
        """
        self.first_merge_design = first_merge_design
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.fast_paths = check_fast_paths(fast_paths)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.DATASEG.CRITERION
        return {
            "first_merge_design": c.MERGE == "first_design",
            "focal_weight": c.FOCAL_WEIGHT,
            "dice_weight": c.DICE_WEIGHT,
            "focal_alpha": c.FOCAL_ALPHA,
            "focal_gamma": c.FOCAL_GAMMA,
            "num_points": c.TRAIN_NUM_POINTS,
            "oversample_ratio": c.OVERSAMPLE_RATIO,
            "importance_sample_ratio": c.IMPORTANCE_SAMPLE_RATIO,
            "fast_paths": cfg.MODEL.DATASEG.FAST_PATHS,
        }

    def prepare(self, outputs, targets, context) -> _MaskTargets:
        """Matching points and the ground truth at them, shared by every layer."""
        device = outputs["pred_logits"].device
        coords = torch.rand(self.num_points, 2, device=device)
        # Mask2Former reads the float masks bilinearly; the fast path reads one byte per point.
        mode = "nearest" if use_fast_paths(self.fast_paths, outputs["pred_masks"]) else "bilinear"
        gt_points = [
            sample_binary_masks(t["masks"], torch.arange(len(t["masks"]), device=device),
                                coords, mode)
            for t in targets
        ]
        return _MaskTargets(coords, gt_points)

    def layer_state(self, layer):
        return None

    @torch.no_grad()
    def cost_inputs(self, layer, state, groups: MergeGroups, prep: _MaskTargets
                    ) -> List[_ImageCostInputs]:
        """Every image's units at the matching points: point logits when no unit is merged
        (the anchors of the anchored matching, MERGE off), else the (merged) ``PointProbs``."""
        point_logits = sample_shared_points(layer["pred_masks"].detach().float(), prep.coords)
        point_logits = point_logits.flatten(0, 1)
        logits = probs = None
        if not groups.has_merges:
            identity = bool((groups.unit_rep == torch.arange(
                groups.num_units, device=groups.unit_rep.device)).all())
            logits = point_logits if identity else point_logits[groups.unit_rep]
        elif self.first_merge_design:
            probs = clamped_sum_logits(
                point_logits, groups.unit_of_query, groups.num_units,
                single_member=groups.unit_size == 1, unit_rep_member=groups.unit_rep)
        else:
            probs = merge_mask_logits(point_logits, groups.unit_of_query, groups.num_units)
        offsets = groups.image_offsets()
        return [_ImageCostInputs(
            None if logits is None else logits[s:e],
            None if probs is None else PointProbs(*(v[s:e] for v in probs)),
            gt) for s, e, gt in zip(offsets[:-1], offsets[1:], prep.gt_points)]

    def image_cost(self, matcher, image_inputs: _ImageCostInputs, class_log_probs, labels
                   ) -> torch.Tensor:
        if image_inputs.unit_logits is not None:
            return matcher.mask_cost_from_logits(
                class_log_probs, image_inputs.unit_logits, labels, image_inputs.gt_points)
        return matcher.mask_cost(class_log_probs, image_inputs.unit_probs, labels,
                                 image_inputs.gt_points)

    def losses(self, layer, state, match: LayerMatch, targets, prep, norm, context
               ) -> Dict[str, torch.Tensor]:
        """``loss_focal`` and ``loss_dice`` of the matched units (weighted, / ``norm``)."""
        masks = layer["pred_masks"].float()
        M = match.unit_idx.numel()
        if M == 0:
            zero = masks.sum() * 0.0
            return {"loss_focal": zero, "loss_dice": zero}
        fast = use_fast_paths(self.fast_paths, masks)
        groups = match.groups
        flat_masks = masks.flatten(0, 1)
        if groups.has_merges:
            pair_of_unit = torch.full(
                (groups.num_units,), -1, dtype=torch.long, device=masks.device)
            pair_of_unit[match.unit_idx] = torch.arange(M, device=masks.device)
            member_pair = pair_of_unit[groups.unit_of_query]
            members = (member_pair >= 0).nonzero().squeeze(1)
            member_pair = member_pair[members]
        else:
            # Every unit is one proposal: members in pair order, no reordering copies.
            members = groups.unit_rep[match.unit_idx]
            member_pair = None
        if members.numel() == flat_masks.shape[0] and bool(
                (members == torch.arange(members.numel(), device=members.device)).all()):
            # Every proposal is matched (crowded images): skip the copy, which backward
            # would keep (13 MB per layer at batch 2 x 100 queries).
            member_logits = flat_masks
        else:
            member_logits = flat_masks[members]  # (Nm, h, w)
        with torch.no_grad():
            if member_pair is None:
                # Mask2Former's uncertainty of a single proposal: -|logit|.
                source, uncertainty_fn = member_logits, _logit_uncertainty
            elif self.first_merge_design:
                source = clamped_sum_probs(torch.sigmoid(member_logits), member_pair, M)
                uncertainty_fn = _uncertainty
            else:
                source = scatter_logsumexp(member_logits.float(), member_pair, M)
                uncertainty_fn = _logit_uncertainty
            points, gt_points = self._sample_points(source, uncertainty_fn, match, targets, fast)
            del source
        point_logits = points.sample(member_logits, member_pair)  # (Nm, P)
        if member_pair is None:
            focal, dice = sigmoid_focal_dice_loss(
                point_logits, gt_points, self.focal_alpha, self.focal_gamma, fast)
            focal, dice = focal.sum(), dice.sum()
        else:
            focal, dice = self._merged_point_losses(
                point_logits, member_pair, groups.unit_size[match.unit_idx] == 1, gt_points,
                fast)
        return {"loss_focal": self.focal_weight * focal / norm,
                "loss_dice": self.dice_weight * dice / norm}

    def _merged_point_losses(self, point_logits, member_pair, single_pair, gt_points, fast):
        """Summed focal and dice losses of a layer whose units include merged ones.

        Single-proposal units take the logits path; merged units merge their members'
        point logits by log-sum-exp into merged logits, which take the same logits path (the
        first design's clamped sum takes the probability path).
        """
        single_member = single_pair[member_pair]
        focal = dice = point_logits.sum() * 0.0
        if bool(single_member.any()):
            f, d = sigmoid_focal_dice_loss(
                point_logits[single_member], gt_points[member_pair[single_member]],
                self.focal_alpha, self.focal_gamma, fast)
            focal, dice = focal + f.sum(), dice + d.sum()
        merged_pairs = (~single_pair).nonzero().squeeze(1)
        if merged_pairs.numel():
            compact = torch.cumsum(~single_pair, 0) - 1  # pair -> index among merged pairs
            rows = ~single_member
            if not self.first_merge_design:
                merged = scatter_logsumexp(
                    point_logits[rows], compact[member_pair[rows]], merged_pairs.numel())
                f, d = sigmoid_focal_dice_loss(
                    merged, gt_points[merged_pairs], self.focal_alpha, self.focal_gamma, fast)
                return focal + f.sum(), dice + d.sum()
            pp = clamped_sum_logits(point_logits[rows], compact[member_pair[rows]],
                                    merged_pairs.numel(), fast=fast)
            targets = gt_points[merged_pairs].to(pp.prob.dtype)
            focal = focal + focal_loss(
                pp, targets, self.focal_alpha, self.focal_gamma, fast).sum()
            dice = dice + dice_loss(pp.prob, targets).sum()
        return focal, dice

    def _sample_points(self, source, uncertainty_fn, match: LayerMatch, targets, fast: bool):
        """Loss points of every matched pair and the ground truth at them.

        Returns ``(points, gt_points)``: a ``_LossPoints`` (M pairs x P points) and the
        (M, P) targets (float at continuous points; uint8 at pixel centres, the fast path).
        """
        gt_masks = [t["masks"] for t in targets]
        if fast:
            gt_size = tuple(gt_masks[0].shape[-2:])
            if any(tuple(m.shape[-2:]) != gt_size for m in gt_masks):
                raise ValueError(
                    "All target masks of a batch must have the same (padded) size; got "
                    f"{sorted({tuple(m.shape[-2:]) for m in gt_masks})}. Pad them to the "
                    "batch's image size, as the meta-architecture does."
                )
            pixels = sample_uncertain_pixels(
                uncertainty_fn(source), self.num_points, self.oversample_ratio,
                self.importance_sample_ratio, gt_size,
            )
            linear = pixels.linear()
            read = lambda b, rows: read_mask_pixels(  # noqa: E731
                gt_masks[b], match.gt_idx[rows], linear[rows])
            points = _LossPoints(pixels=pixels)
        else:
            coords = get_uncertain_point_coords_with_randomness(
                source[:, None], uncertainty_fn, self.num_points, self.oversample_ratio,
                self.importance_sample_ratio,
            )
            read = lambda b, rows: sample_binary_masks(  # noqa: E731
                gt_masks[b], match.gt_idx[rows], coords[rows], "bilinear")
            points = _LossPoints(coords=coords)
        gt_points, start = [], 0
        for b, n in enumerate(match.pairs_per_image):
            if n:
                gt_points.append(read(b, slice(start, start + n)))
                start += n
        return points, torch.cat(gt_points)
