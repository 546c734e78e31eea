"""Readable references that the package is tested against.

They are not part of the package: the criterion merges on sampled points; these apply a MERGE
to whole masks, so tests can check the meaning directly. The post-processing is tested
against Mask2Former's inference written out from its published formulas.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F

from dataseg.modeling.criterion import (
    MergeGroups,
    merge_class_log_probs,
    mergeable_classes,
    scatter_logsumexp,
)
from dataseg.modeling.criterion.merge_first_design import clamped_sum_probs, group_by_class
from dataseg.tasks import get_task


def build_merge(task: str):
    """The argmax grouping of ``task``: ``fn(pred_logits, is_thing) -> MergeGroups``.

    Groups proposals by predicted class under the task's MERGE rule, from the predictions
    alone (the criterion anchors units on the ground truth instead).
    """
    def merge(pred_logits: torch.Tensor, is_thing: Optional[torch.Tensor] = None):
        C = pred_logits.shape[-1] - 1
        return group_by_class(pred_logits,
                              mergeable_classes(task, is_thing, C, pred_logits.device))

    get_task(task)  # an unknown task fails here, naming the known ones
    return merge


@dataclass
class MergedProposals:
    """Full-resolution result of a MERGE, in probability space.

    Attributes:
        class_probs: (U, C+1) merged class distributions.
        mask_probs: (U, H, W) merged mask probabilities.
        groups: the ``MergeGroups`` that produced them.
    """

    class_probs: torch.Tensor
    mask_probs: torch.Tensor
    groups: MergeGroups


def merge_proposals(pred_logits: torch.Tensor, pred_masks: torch.Tensor, task: str,
                    is_thing: Optional[torch.Tensor] = None, first_design: bool = False
                    ) -> MergedProposals:
    """Apply the task's MERGE to (B, Q, C+1) logits and (B, Q, H, W) mask logits.

    Units of all images are concatenated; image ``b``'s units are
    ``groups.image_offsets()[b]:groups.image_offsets()[b+1]``.
    """
    groups = build_merge(task)(pred_logits, is_thing)
    B, Q, C1 = pred_logits.shape
    class_probs = merge_class_log_probs(
        pred_logits.reshape(B * Q, C1), groups.unit_of_query, groups.num_units).exp()
    masks = pred_masks.float().flatten(0, 1)
    if first_design:
        mask_probs = clamped_sum_probs(torch.sigmoid(masks), groups.unit_of_query,
                                       groups.num_units)
    else:
        mask_probs = torch.sigmoid(scatter_logsumexp(masks, groups.unit_of_query,
                                                     groups.num_units))
    return MergedProposals(class_probs, mask_probs, groups)


# --- Mask2Former's inference, written from its published formulas --------------------------
# ``MaskFormer.forward`` at test time followed by its ``semantic_inference``,
# ``panoptic_inference`` and ``instance_inference``: plain, unchunked, one mask at a time where
# that is what the formula says. The package's post-processing is tested against these.


def mask2former_resize(mask_logits: torch.Tensor, padded_size, image_size, out_size):
    """(Q, h, w) mask logits -> (Q, height, width): upsample to the padded input, crop, resize."""
    x = F.interpolate(mask_logits[None], size=tuple(padded_size), mode="bilinear",
                      align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]
    return F.interpolate(x, size=tuple(out_size), mode="bilinear", align_corners=False)[0]


def mask2former_semantic(cls_logits, masks):
    """(C, H, W) = einsum(softmax(cls)[:, :-1], sigmoid(masks)) on RESIZED mask logits."""
    return torch.einsum("qc,qhw->chw", F.softmax(cls_logits, -1)[:, :-1], masks.sigmoid())


def mask2former_panoptic(cls_logits, masks, is_thing, object_mask_threshold, overlap_threshold):
    """MaskFormer's panoptic merge on RESIZED mask logits: (H, W) int32 ids, segments_info."""
    scores, labels = F.softmax(cls_logits, -1).max(-1)
    probs = masks.sigmoid()
    keep = (labels != cls_logits.shape[-1] - 1) & (scores > object_mask_threshold)
    scores, labels, probs = scores[keep], labels[keep], probs[keep]
    panoptic_seg = torch.zeros(masks.shape[-2:], dtype=torch.int32)
    segments_info = []
    if probs.shape[0] == 0:
        return panoptic_seg, segments_info
    owner = (scores[:, None, None] * probs).argmax(0)
    stuff_ids = {}
    for k in range(probs.shape[0]):
        cls = int(labels[k])
        thing = bool(is_thing[cls])
        mask_area = int((owner == k).sum())
        original_area = int((probs[k] >= 0.5).sum())
        mask = (owner == k) & (probs[k] >= 0.5)
        if mask_area > 0 and original_area > 0 and int(mask.sum()) > 0:
            if mask_area / original_area < overlap_threshold:
                continue
            if not thing:
                if cls in stuff_ids:
                    panoptic_seg[mask] = stuff_ids[cls]
                    continue
                stuff_ids[cls] = len(segments_info) + 1
            panoptic_seg[mask] = len(segments_info) + 1
            segments_info.append({"id": len(segments_info) + 1, "isthing": thing,
                                  "category_id": cls})
    return panoptic_seg, segments_info


def mask2former_instances(cls_logits, masks, is_thing, topk):
    """Top-k over all (query, class) pairs, then stuff pairs dropped, on RESIZED mask logits.

    Returns (scores (K,), classes (K,), binary masks (K, H, W)), sorted by class probability.
    """
    probs = F.softmax(cls_logits, -1)[:, :-1]
    num_classes = probs.shape[1]
    class_scores, index = probs.flatten().topk(min(topk, probs.numel()), sorted=True)
    queries, classes = index // num_classes, index % num_classes
    keep = torch.tensor([bool(is_thing[int(c)]) for c in classes], dtype=torch.bool)
    class_scores, queries, classes = class_scores[keep], queries[keep], classes[keep]
    logits = masks[queries]
    binary = (logits > 0).float()
    mask_scores = ((logits.sigmoid().flatten(1) * binary.flatten(1)).sum(1)
                   / (binary.flatten(1).sum(1) + 1e-6))
    return class_scores * mask_scores, classes, binary.bool()
