"""``MergeCriterion``: task-specific MERGE -> Hungarian matching -> weighted losses."""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from detectron2.utils import comm

from ...tasks import get_task
from ..registry import CRITERION_REGISTRY
from .box_losses import (
    box_projection_targets,
    color_similarity,
    images_to_lab,
    mask_projections,
    pairwise_loss,
    projection_dice,
)
from .context import CriterionContext
from .losses import (
    class_nll_loss,
    compiled_sigmoid_focal_dice_loss,
    dice_loss,
    focal_loss,
    sigmoid_focal_dice_loss,
)
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
from .point_sampling import (
    PixelPoints,
    read_mask_pixels,
    sample_binary_masks,
    sample_logits_at_pixels,
    sample_shared_points,
    sample_uncertain_pixels,
)

__all__ = ["MergeCriterion", "build_criterion", "MERGE_MATCHINGS"]

# How merged units meet the ground truth (see ``merge.anchored_groups``):
#   "anchored": every segment gets an anchor proposal first, same-class proposals join it;
#   "unit": the first design, proposals grouped by argmax and the units matched freely.
MERGE_MATCHINGS = ("anchored", "unit")


@dataclass
class _LayerMatch:
    """Matching result of one decoder layer (units of all images, pairs ordered by image)."""

    groups: MergeGroups
    class_log_probs: torch.Tensor  # (U, C+1), with grad
    unit_idx: torch.Tensor  # (M,) global unit ids
    gt_idx: torch.Tensor  # (M,) gt index within its image
    gt_labels: torch.Tensor  # (M,) class of the matched gt
    pair_image: torch.Tensor  # (M,) image of each pair
    pairs_per_image: List[int]


def _uncertainty(probs: torch.Tensor) -> torch.Tensor:
    # Most uncertain where the (merged) probability is closest to 0.5.
    return -(probs - 0.5).abs()


def _logit_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    # Same order as ``_uncertainty`` of sigmoid(logits), without the sigmoid.
    return logits.abs().neg_()


@dataclass
class _LossPoints:
    """The loss points of M pairs: ground-truth pixels (grid sampler) or continuous points."""

    pixels: Optional[PixelPoints] = None
    coords: Optional[torch.Tensor] = None  # (M, P, 2) in [0, 1]

    def sample(self, member_logits: torch.Tensor, member_pair: Optional[torch.Tensor]):
        """Bilinear reads (with gradient) of each member's logits at its pair's points."""
        if self.pixels is not None:
            return sample_logits_at_pixels(member_logits, self.pixels, member_pair)
        coords = self.coords if member_pair is None else self.coords[member_pair]
        return point_sample(member_logits[:, None], coords, align_corners=False)[:, 0]


@CRITERION_REGISTRY.register()
class MergeCriterion(nn.Module):
    """DaTaSeg's training criterion.

    For a batch from ONE dataset, every decoder layer's proposals are (1) merged by the
    task's MERGE rule (``MERGE_REGISTRY[context.task]``; see ``merge.py`` for the arithmetic
    and for how background-predicted proposals are kept as individual units), (2) matched
    one-to-one to the ground truth with the Hungarian algorithm, and (3) given the losses:

    * every task: softmax cross-entropy over the dataset's classes + background (last,
      weight ``no_object_weight``), as NLL of the merged class distribution;
    * mask tasks (panoptic / semantic / instance): focal + dice on importance-sampled
      points of the matched (merged) masks;
    * box task: projection dice of the matched masks vs their boxes at the mask resolution,
      plus the optional pairwise colour term.

    Unmatched units (including every unit of an image without annotations) get the
    background class; mask losses then have no pairs and are 0 with a gradient path, so the
    key set per task is stable. Mask losses are divided by the number of matched pairs
    averaged over ranks (at least 1).

    Returns a dict of ALREADY weighted losses: ``loss_ce`` + (``loss_focal``, ``loss_dice``)
    or (``loss_projection`` [+ ``loss_pairwise``]), and the same with suffix ``_<i>`` for
    auxiliary decoder layer ``i`` when deep supervision is on.
    """

    @configurable
    def __init__(
        self,
        *,
        matcher: HungarianMatcher,
        merge_mode: str = "logsumexp",
        merge_matching: str = "anchored",
        merge_enabled: bool = True,
        class_weight: float = 2.0,
        focal_weight: float = 20.0,
        dice_weight: float = 5.0,
        projection_weight: float = 5.0,
        no_object_weight: float = 0.1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        pairwise_enabled: bool = False,
        pairwise_weight: float = 1.0,
        pairwise_size: int = 3,
        pairwise_dilation: int = 2,
        pairwise_color_thresh: float = 0.3,
        pairwise_warmup_iters: int = 10000,
        pixel_mean: Sequence[float] = (103.530, 116.280, 123.675),
        pixel_std: Sequence[float] = (57.375, 57.120, 58.395),
        input_format: str = "BGR",
        dataset_loss_weights: Optional[Dict[str, float]] = None,
        gt_sample_mode: str = "nearest",
        point_sampler: str = "grid",
        compile_point_losses: bool = False,
    ):
        """
        Args:
            matcher: the Hungarian matcher (cost weights).
            merge_mode: mask merge arithmetic, one of ``MERGE_MODES``.
            merge_matching: how merged units are paired with ground truth, one of
                ``MERGE_MATCHINGS`` ("anchored": ``merge.anchored_groups``; "unit": group by
                argmax, then match the units freely, the first design kept for the ablation).
            merge_enabled: False replaces every task's MERGE by the identity (proposals are
                matched one by one, as in Mask2Former): the ablation of DaTaSeg's MERGE.
            class_weight, focal_weight, dice_weight, projection_weight: loss weights.
            no_object_weight: CE weight of the background class.
            focal_alpha, focal_gamma: focal loss parameters.
            num_points, oversample_ratio, importance_sample_ratio: point sampling of the mask
                losses (PointRend importance sampling); ``num_points`` shared points also
                estimate the matching cost.
            deep_supervision: also match and supervise every ``outputs["aux_outputs"]`` layer.
            pairwise_*: the optional BoxInst-style colour-affinity term for box data; its
                weight ramps linearly from 0 over ``pairwise_warmup_iters`` iterations.
            pixel_mean, pixel_std, input_format: to recover colours from normalised images
                (pairwise term only).
            dataset_loss_weights: multiplier of every loss of a dataset, by dataset name
                (missing names: 1.0).
            gt_sample_mode: how ground-truth masks (4x the prediction resolution) are read at
                continuous points (the matching points, and the loss points of the
                "detectron2" sampler): "nearest" (default: one byte read per point, 4x
                cheaper) or "bilinear" (= ``point_sample`` of the float masks, as Mask2Former).
            point_sampler: importance sampling of the loss points: "grid" (default,
                ``sample_uncertain_pixels``: the same uncertain region, points at
                ground-truth pixel centres, several times faster on CPU) or "detectron2"
                (``get_uncertain_point_coords_with_randomness``, continuous points).
            compile_point_losses: run the focal + dice of single proposals through
                ``torch.compile`` (``compiled_sigmoid_focal_dice_loss``): ~18 % less criterion
                time on CPU after a one-off compilation; needs a C++ compiler.
        """
        super().__init__()
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"MERGE_MODE must be one of {MERGE_MODES}, got {merge_mode!r}")
        self.matcher = matcher
        if merge_matching not in MERGE_MATCHINGS:
            raise ValueError(
                f"MERGE_MATCHING must be one of {MERGE_MATCHINGS}, got {merge_matching!r}")
        self.merge_mode = merge_mode
        self.merge_matching = merge_matching
        self.merge_enabled = merge_enabled
        self.class_weight = class_weight
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.projection_weight = projection_weight
        self.no_object_weight = no_object_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.pairwise_enabled = pairwise_enabled
        self.pairwise_weight = pairwise_weight
        self.pairwise_size = pairwise_size
        self.pairwise_dilation = pairwise_dilation
        self.pairwise_color_thresh = pairwise_color_thresh
        self.pairwise_warmup_iters = pairwise_warmup_iters
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)
        self.input_format = input_format
        self.dataset_loss_weights = dict(dataset_loss_weights or {})
        if gt_sample_mode not in ("nearest", "bilinear"):
            raise ValueError(
                "MODEL.DATASEG.CRITERION.GT_SAMPLE_MODE must be 'nearest' or 'bilinear', got "
                f"{gt_sample_mode!r}")
        self.gt_sample_mode = gt_sample_mode
        if point_sampler not in ("grid", "detectron2"):
            raise ValueError(
                "MODEL.DATASEG.CRITERION.POINT_SAMPLER must be 'grid' or 'detectron2', got "
                f"{point_sampler!r}")
        self.point_sampler = point_sampler
        self._point_loss = (compiled_sigmoid_focal_dice_loss() if compile_point_losses
                            else sigmoid_focal_dice_loss)

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
        weights = list(c.DATASET_LOSS_WEIGHTS)
        train = list(cfg.DATASETS.TRAIN)
        if weights and len(weights) != len(train):
            raise ValueError(
                f"MODEL.DATASEG.CRITERION.DATASET_LOSS_WEIGHTS has {len(weights)} entries but "
                f"DATASETS.TRAIN has {len(train)} ({train}); give one per dataset or none."
            )
        return {
            "matcher": matcher,
            "merge_mode": c.MERGE_MODE,
            "merge_enabled": c.MERGE_ENABLED,
            "merge_matching": c.MERGE_MATCHING,
            "class_weight": c.CLASS_WEIGHT,
            "focal_weight": c.FOCAL_WEIGHT,
            "dice_weight": c.DICE_WEIGHT,
            "projection_weight": c.PROJECTION_WEIGHT,
            "no_object_weight": c.NO_OBJECT_WEIGHT,
            "focal_alpha": c.FOCAL_ALPHA,
            "focal_gamma": c.FOCAL_GAMMA,
            "num_points": c.TRAIN_NUM_POINTS,
            "oversample_ratio": c.OVERSAMPLE_RATIO,
            "importance_sample_ratio": c.IMPORTANCE_SAMPLE_RATIO,
            "deep_supervision": c.DEEP_SUPERVISION,
            "pairwise_enabled": c.PAIRWISE.ENABLED,
            "pairwise_weight": c.PAIRWISE.WEIGHT,
            "pairwise_size": c.PAIRWISE.SIZE,
            "pairwise_dilation": c.PAIRWISE.DILATION,
            "pairwise_color_thresh": c.PAIRWISE.COLOR_THRESH,
            "pairwise_warmup_iters": c.PAIRWISE.WARMUP_ITERS,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "input_format": cfg.INPUT.FORMAT,
            "dataset_loss_weights": dict(zip(train, (float(w) for w in weights))),
            "gt_sample_mode": c.GT_SAMPLE_MODE,
            "point_sampler": c.POINT_SAMPLER,
            "compile_point_losses": c.COMPILE_POINT_LOSSES,
        }

    # --------------------------------------------------------------------------------------
    def forward(
        self, outputs: Dict, targets: List[Dict], context: CriterionContext
    ) -> Dict[str, torch.Tensor]:
        box_task = get_task(context.task).box_supervised
        layers = [(outputs, "")]
        if self.deep_supervision:
            layers += [(aux, f"_{i}") for i, aux in enumerate(outputs.get("aux_outputs", []))]
        B, Q, C1 = outputs["pred_logits"].shape
        h, w = outputs["pred_masks"].shape[-2:]
        self._check_targets(targets, B, C1 - 1, box_task, context)
        device = outputs["pred_logits"].device
        mergeable = mergeable_classes(context.task, context.is_thing, C1 - 1, device)
        if not self.merge_enabled:
            mergeable = torch.zeros_like(mergeable)
        merging = bool(mergeable.any())

        # Ground truth prepared once and shared by all layers: matching points (and the GT at
        # them) for mask tasks, box projections for the box task.
        if box_task:
            H, W = self._padded_size(targets, context, h, w)
            gt_prep = [
                box_projection_targets(t["boxes"].to(device), (h, w), (H, W)) for t in targets
            ]
            match_coords = None
        else:
            match_coords = torch.rand(self.num_points, 2, device=device)
            gt_prep = [
                sample_binary_masks(
                    t["masks"], torch.arange(len(t["masks"]), device=device), match_coords,
                    self.gt_sample_mode,
                )
                for t in targets
            ]

        matches = []
        # Box data: max-projections of all proposals, computed once with grad and shared by
        # matching (detached) and the loss (matched rows).
        layers = [
            ({**layer, "_projections": mask_projections(layer["pred_masks"].float().flatten(0, 1))}
             if box_task else layer, suffix)
            for layer, suffix in layers
        ]
        if box_task and merging:
            raise ValueError(f"Task {context.task!r} is box-supervised; its MERGE must not merge.")
        for layer, _ in layers:
            if merging and self.merge_matching == "unit":
                groups = group_by_class(layer["pred_logits"], mergeable)
                match = self._match(layer, groups, targets, gt_prep, match_coords, box_task)
            else:
                groups = singleton_groups(B, Q, device)
                match = self._match(layer, groups, targets, gt_prep, match_coords, box_task)
                if merging:
                    match = self._anchored_match(layer, match, targets, mergeable)
            matches.append(match)

        # Mask2Former's normalisation: the number of ground-truth segments (boxes), averaged
        # over ranks, the same for every decoder layer whatever the MERGE made of its units.
        num_gt = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num_gt)
            num_gt = num_gt / comm.get_world_size()
        norm = num_gt.clamp(min=1.0)

        pair_sim = None
        if box_task and self.pairwise_enabled:
            pair_sim = self._color_similarity(context, w)
        multiplier = self.dataset_loss_weights.get(context.dataset_name, 1.0)
        losses = {}
        for (layer, suffix), match in zip(layers, matches):
            if box_task:
                layer_losses = self._box_losses(
                    layer, match, targets, gt_prep, norm, pair_sim, context
                )
            else:
                layer_losses = self._mask_losses(layer, match, targets, norm)
            layer_losses["loss_ce"] = self.class_weight * self._class_loss(match)
            for k, v in layer_losses.items():
                losses[k + suffix] = v * multiplier if multiplier != 1.0 else v
        return losses

    # --------------------------------------------------------------------------------------
    @staticmethod
    def _check_targets(targets, B, C, box_task, context):
        if len(targets) != B:
            raise ValueError(f"Got {len(targets)} targets for a batch of {B} images.")
        key = "boxes" if box_task else "masks"
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

    @staticmethod
    def _padded_size(targets, context, h, w):
        for t in targets:
            if t.get("masks") is not None:
                return tuple(t["masks"].shape[-2:])
        if context.images is not None:
            return tuple(context.images.shape[-2:])
        # Masks are predicted at stride 4 of the padded image (docs/interfaces.md).
        return (4 * h, 4 * w)

    def _match(self, layer, groups, targets, gt_prep, match_coords, box_task) -> _LayerMatch:
        logits = layer["pred_logits"]
        masks = layer["pred_masks"]
        B, Q, C1 = logits.shape
        class_logp = merge_class_log_probs(
            logits.reshape(B * Q, C1), groups.unit_of_query, groups.num_units
        )
        offsets = groups.image_offsets()
        with torch.no_grad():
            clp = class_logp.detach()
            if box_task:
                px, py = (v.detach() for v in layer["_projections"])
            else:
                point_logits = sample_shared_points(masks.detach().float(), match_coords)
                pp = merge_mask_logits(
                    point_logits.flatten(0, 1),
                    groups.unit_of_query,
                    groups.num_units,
                    self.merge_mode,
                    single_member=groups.unit_size == 1,
                    unit_rep_member=groups.unit_rep,
                )
            unit_idx, gt_idx, gt_labels, pair_image, per_image = [], [], [], [], []
            for b, t in enumerate(targets):
                s, e = offsets[b], offsets[b + 1]
                labels = t["labels"].to(logits.device)
                if labels.numel() == 0 or e == s:
                    per_image.append(0)
                    continue
                if box_task:
                    bx, by = gt_prep[b]
                    cost = self.matcher.box_cost(clp[s:e], px[s:e], py[s:e], labels, bx, by)
                else:
                    unit_pp = PointProbs(*(v[s:e] for v in pp))
                    cost = self.matcher.mask_cost(clp[s:e], unit_pp, labels, gt_prep[b])
                rows, cols = self.matcher.assign(cost)
                unit_idx.append(rows + s)
                gt_idx.append(cols)
                gt_labels.append(labels[cols])
                pair_image.append(torch.full_like(rows, b))
                per_image.append(rows.numel())
        empty = torch.zeros(0, dtype=torch.long, device=logits.device)
        cat = lambda xs: torch.cat(xs) if xs else empty  # noqa: E731
        return _LayerMatch(
            groups,
            class_logp,
            cat(unit_idx),
            cat(gt_idx),
            cat(gt_labels),
            cat(pair_image),
            per_image,
        )

    @staticmethod
    def _anchored_match(layer, anchors: _LayerMatch, targets, mergeable) -> _LayerMatch:
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
        return _LayerMatch(groups, class_logp, unit_idx, gt_idx, anchors.gt_labels,
                           anchors.pair_image, anchors.pairs_per_image)

    def _class_loss(self, match: _LayerMatch) -> torch.Tensor:
        num_classes = match.class_log_probs.shape[-1] - 1
        target = torch.full(
            (match.groups.num_units,), num_classes, dtype=torch.long,
            device=match.class_log_probs.device,
        )
        target[match.unit_idx] = match.gt_labels
        return class_nll_loss(match.class_log_probs, target, self.no_object_weight)

    def _mask_losses(self, layer, match: _LayerMatch, targets, norm) -> Dict[str, torch.Tensor]:
        masks = layer["pred_masks"].float()
        M = match.unit_idx.numel()
        if M == 0:
            zero = masks.sum() * 0.0
            return {"loss_focal": zero, "loss_dice": zero}
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
            elif self.merge_mode == "logsumexp":
                source = scatter_logsumexp(member_logits.float(), member_pair, M)
                uncertainty_fn = _logit_uncertainty
            else:
                source = merge_mask_probs(
                    torch.sigmoid(member_logits), member_pair, M, self.merge_mode)
                uncertainty_fn = _uncertainty
            points, gt_points = self._sample_points(source, uncertainty_fn, match, targets)
            del source
        point_logits = points.sample(member_logits, member_pair)  # (Nm, P)
        if member_pair is None:
            focal, dice = self._point_loss(
                point_logits, gt_points, self.focal_alpha, self.focal_gamma)
            focal, dice = focal.sum(), dice.sum()
        else:
            focal, dice = self._merged_point_losses(
                point_logits, member_pair, groups.unit_size[match.unit_idx] == 1, gt_points)
        return {"loss_focal": self.focal_weight * focal / norm,
                "loss_dice": self.dice_weight * dice / norm}

    def _merged_point_losses(self, point_logits, member_pair, single_pair, gt_points):
        """Summed focal and dice losses of a layer whose units include merged ones.

        Single-proposal units take the logits path; merged units merge their members'
        point logits (``MERGE_MODE``): ``logsumexp`` gives merged logits, which take the same
        logits path; the other modes take the probability path.
        """
        single_member = single_pair[member_pair]
        focal = dice = point_logits.sum() * 0.0
        if bool(single_member.any()):
            f, d = self._point_loss(
                point_logits[single_member], gt_points[member_pair[single_member]],
                self.focal_alpha, self.focal_gamma)
            focal, dice = focal + f.sum(), dice + d.sum()
        merged_pairs = (~single_pair).nonzero().squeeze(1)
        if merged_pairs.numel():
            compact = torch.cumsum(~single_pair, 0) - 1  # pair -> index among merged pairs
            rows = ~single_member
            if self.merge_mode == "logsumexp":
                merged = scatter_logsumexp(
                    point_logits[rows], compact[member_pair[rows]], merged_pairs.numel())
                f, d = self._point_loss(
                    merged, gt_points[merged_pairs], self.focal_alpha, self.focal_gamma)
                return focal + f.sum(), dice + d.sum()
            pp = merge_mask_logits(point_logits[rows], compact[member_pair[rows]],
                                   merged_pairs.numel(), self.merge_mode)
            targets = gt_points[merged_pairs].to(pp.prob.dtype)
            focal = focal + focal_loss(pp, targets, self.focal_alpha, self.focal_gamma).sum()
            dice = dice + dice_loss(pp.prob, targets).sum()
        return focal, dice

    def _sample_points(self, source, uncertainty_fn, match: _LayerMatch, targets):
        """Loss points of every matched pair and the ground truth at them.

        Returns ``(points, gt_points)``: a ``_LossPoints`` (M pairs x P points) and the
        (M, P) targets (uint8 on pixel centres, float for the detectron2 sampler).
        """
        gt_masks = [t["masks"] for t in targets]
        if self.point_sampler == "grid":
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
                gt_masks[b], match.gt_idx[rows], coords[rows], self.gt_sample_mode)
            points = _LossPoints(coords=coords)
        gt_points, start = [], 0
        for b, n in enumerate(match.pairs_per_image):
            if n:
                gt_points.append(read(b, slice(start, start + n)))
                start += n
        return points, torch.cat(gt_points)

    def _box_losses(
        self, layer, match: _LayerMatch, targets, gt_prep, norm, pair_sim, context
    ) -> Dict[str, torch.Tensor]:
        masks = layer["pred_masks"].float()
        M = match.unit_idx.numel()
        out = {}
        if M == 0:
            zero = masks.sum() * 0.0
            out["loss_projection"] = zero
            if self.pairwise_enabled:
                out["loss_pairwise"] = zero
            return out
        # Box units are the queries themselves (no merge), in flattened query order.
        px, py = (v[match.unit_idx] for v in layer["_projections"])
        bx = torch.cat([gt_prep[b][0][match.gt_idx[match.pair_image == b]]
                        for b in range(len(targets)) if match.pairs_per_image[b]])
        by = torch.cat([gt_prep[b][1][match.gt_idx[match.pair_image == b]]
                        for b in range(len(targets)) if match.pairs_per_image[b]])
        proj = (projection_dice(px, bx) + projection_dice(py, by)).sum() / norm
        out["loss_projection"] = self.projection_weight * proj
        if self.pairwise_enabled:
            warmup = min(1.0, float(context.iteration) / max(1, self.pairwise_warmup_iters))
            box_masks = by[:, :, None] * bx[:, None, :]
            pw = pairwise_loss(
                masks.flatten(0, 1)[match.unit_idx],
                pair_sim[match.pair_image],
                box_masks,
                self.pairwise_color_thresh,
                self.pairwise_size,
                self.pairwise_dilation,
            )
            out["loss_pairwise"] = self.pairwise_weight * warmup * pw
        return out

    def _color_similarity(self, context: CriterionContext, mask_width: int) -> torch.Tensor:
        if context.images is None:
            raise ValueError(
                "MODEL.DATASEG.CRITERION.PAIRWISE.ENABLED needs context.images (the normalised "
                "padded images); the meta-architecture must pass them in CriterionContext."
            )
        with torch.no_grad():
            stride = max(1, context.images.shape[-1] // mask_width)
            lab = images_to_lab(
                context.images, self.pixel_mean, self.pixel_std, self.input_format, stride
            )
            return color_similarity(lab, self.pairwise_size, self.pairwise_dilation)


def build_criterion(cfg) -> nn.Module:
    """Build the criterion named by ``MODEL.DATASEG.CRITERION.NAME``."""
    return CRITERION_REGISTRY.get(cfg.MODEL.DATASEG.CRITERION.NAME)(cfg)
