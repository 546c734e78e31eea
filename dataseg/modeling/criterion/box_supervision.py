"""Box supervision of ``MergeCriterion``: projection dice (+ optional pairwise colour term).

Used for box-only data (BoxInst style): the max-projections of a proposal's mask on the x and
y axes are compared with its box's, so boxes train masks. Box tasks never merge.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from detectron2.config import configurable

from .box_losses import (
    box_projection_targets,
    color_similarity,
    images_to_lab,
    mask_projections,
    pairwise_loss,
    projection_dice,
)
from .context import CriterionContext
from .merge import MergeGroups
from .supervision import LayerMatch, Supervision

__all__ = ["BoxSupervision"]


@dataclass
class _BoxTargets:
    """Every image's box projections at the mask resolution, and the colour affinities."""

    projections: List[Tuple[torch.Tensor, torch.Tensor]]  # per image (K_b, w), (K_b, h)
    pair_similarity: Optional[torch.Tensor] = None


class BoxSupervision(Supervision):
    """Projection supervision of mask proposals by ground-truth boxes."""

    target_key = "boxes"

    @configurable
    def __init__(
        self,
        *,
        projection_weight: float = 5.0,
        pairwise_enabled: bool = False,
        pairwise_weight: float = 1.0,
        pairwise_size: int = 3,
        pairwise_dilation: int = 2,
        pairwise_color_thresh: float = 0.3,
        pairwise_warmup_iters: int = 10000,
        pixel_mean: Sequence[float] = (103.530, 116.280, 123.675),
        pixel_std: Sequence[float] = (57.375, 57.120, 58.395),
        input_format: str = "BGR",
    ):
        """
        Args:
            projection_weight: weight of the projection dice (x + y).
            pairwise_*: the optional BoxInst-style colour-affinity term; its weight ramps
                linearly from 0 over ``pairwise_warmup_iters`` iterations.
            pixel_mean, pixel_std, input_format: to recover colours from normalised images
                (pairwise term only).
        """
        self.projection_weight = projection_weight
        self.pairwise_enabled = pairwise_enabled
        self.pairwise_weight = pairwise_weight
        self.pairwise_size = pairwise_size
        self.pairwise_dilation = pairwise_dilation
        self.pairwise_color_thresh = pairwise_color_thresh
        self.pairwise_warmup_iters = pairwise_warmup_iters
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.DATASEG.CRITERION
        return {
            "projection_weight": c.PROJECTION_WEIGHT,
            "pairwise_enabled": c.PAIRWISE.ENABLED,
            "pairwise_weight": c.PAIRWISE.WEIGHT,
            "pairwise_size": c.PAIRWISE.SIZE,
            "pairwise_dilation": c.PAIRWISE.DILATION,
            "pairwise_color_thresh": c.PAIRWISE.COLOR_THRESH,
            "pairwise_warmup_iters": c.PAIRWISE.WARMUP_ITERS,
            "pixel_mean": list(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": list(cfg.MODEL.PIXEL_STD),
            "input_format": cfg.INPUT.FORMAT,
        }

    def prepare(self, outputs, targets, context: CriterionContext) -> _BoxTargets:
        """Box projections (and colour affinities) shared by every layer."""
        h, w = outputs["pred_masks"].shape[-2:]
        device = outputs["pred_logits"].device
        H, W = self._padded_size(targets, context, h, w)
        projections = [box_projection_targets(t["boxes"].to(device), (h, w), (H, W))
                       for t in targets]
        pair_sim = self._color_similarity(context, w) if self.pairwise_enabled else None
        return _BoxTargets(projections, pair_sim)

    def layer_state(self, layer):
        # Max-projections of all proposals, computed once with grad and shared by matching
        # (detached) and the loss (matched rows).
        return mask_projections(layer["pred_masks"].float().flatten(0, 1))

    def cost_inputs(self, layer, state, groups: MergeGroups, prep: _BoxTargets) -> List[tuple]:
        """Every image's units' mask projections and its box projections:
        ``(px (U_b, w), py (U_b, h), bx (K_b, w), by (K_b, h))``."""
        px, py = (v.detach() for v in state)
        offsets = groups.image_offsets()
        return [(px[s:e], py[s:e], bx, by)
                for s, e, (bx, by) in zip(offsets[:-1], offsets[1:], prep.projections)]

    def image_cost(self, matcher, image_inputs, class_log_probs, labels) -> torch.Tensor:
        px, py, bx, by = image_inputs
        return matcher.box_cost(class_log_probs, px, py, labels, bx, by)

    @staticmethod
    def _padded_size(targets, context, h, w):
        for t in targets:
            if t.get("masks") is not None:
                return tuple(t["masks"].shape[-2:])
        if context.images is not None:
            return tuple(context.images.shape[-2:])
        # Masks are predicted at stride 4 of the padded image (docs/interfaces.md).
        return (4 * h, 4 * w)

    def losses(self, layer, state, match: LayerMatch, targets, prep: _BoxTargets, norm, context
               ) -> Dict[str, torch.Tensor]:
        """``loss_projection`` (weighted, / ``norm``) [+ ``loss_pairwise``] of the pairs."""
        gt_prep, pair_sim = prep.projections, prep.pair_similarity
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
        px, py = (v[match.unit_idx] for v in state)
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
