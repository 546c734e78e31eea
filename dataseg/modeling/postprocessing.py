"""Per-task inference: turn (class logits, mask logits) of one image into detectron2 outputs.

Every function takes ONE image's predictions at mask resolution (stride 4 of the padded
batch) and returns results at the requested ``height x width``, computing what Mask2Former's
``MaskFormer`` inference computes from the same logits (tested against a reference written
from its published formulas, at output sizes other than the network input):

1. mask LOGITS are upsampled to the padded input, cropped to the unpadded input and resized to
   the output size (:func:`resize_to_original`); every decision below works on these;
2. semantic: ``sum_q softmax(class)_q[c] * sigmoid(mask_q)``;
3. panoptic: MaskFormer's per-pixel competition of the confident queries, one id per stuff
   class; DaTaSeg's MERGE at inference (``merge_stuff``) is an addition on top of it;
4. instances: the top-k (query, class) pairs over ALL classes, then stuff pairs are dropped.
"""

import math
from typing import List, Sequence, Tuple

import torch
from torch.nn import functional as F

from detectron2.structures import Boxes, Instances

__all__ = [
    "resize_to_original",
    "semantic_inference",
    "panoptic_inference",
    "instance_inference",
    "masks_to_boxes",
    "image_outputs",
]


def resize_to_original(x: torch.Tensor, stride: int, image_size: Tuple[int, int],
                       out_size: Tuple[int, int]) -> torch.Tensor:
    """Map stride-``stride`` maps of a padded image to the requested output size.

    Mask2Former's chain: bilinear upsampling (``align_corners=False``) to the padded input,
    crop to ``image_size``, bilinear resize to ``out_size`` (detectron2's
    ``sem_seg_postprocess``). Apply it to LOGITS: interpolation does not commute with the
    sigmoid.

    Args:
        x: (N, h, w) or (N, C, h, w) maps at the padded mask resolution (padded input / stride).
        stride: input pixels per map pixel.
        image_size: (h, w) of the unpadded network input.
        out_size: (height, width) wanted.

    Returns:
        (N, height, width) or (N, C, height, width), ``x``'s dtype.
    """
    squeeze = x.dim() == 3
    if squeeze:
        x = x[None]
    # An upsampled pixel reads the two map rows (cols) nearest to it, so the rows past the
    # unpadded image are never read for pixels inside it: upsampling only the rows that reach
    # inside gives the same values as upsampling the whole padded map, then cropping.
    need_h = min(x.shape[-2], math.ceil(image_size[0] / stride) + 1)
    need_w = min(x.shape[-1], math.ceil(image_size[1] / stride) + 1)
    y = F.interpolate(x[..., :need_h, :need_w], size=(need_h * stride, need_w * stride),
                      mode="bilinear", align_corners=False)
    y = y[..., : image_size[0], : image_size[1]]
    if tuple(out_size) != tuple(image_size):  # a same-size bilinear resize is the identity
        y = F.interpolate(y, size=tuple(out_size), mode="bilinear", align_corners=False)
    return y[0] if squeeze else y


def semantic_inference(cls_logits, mask_logits, stride, image_size, out_size):
    """(C, height, width) scores: sum_q softmax(class)_q[c] * sigmoid(resized mask logits_q).

    Args:
        cls_logits: (Q, C+1), background last.
        mask_logits: (Q, h, w) at mask resolution.
        stride, image_size, out_size: see :func:`resize_to_original`.
    """
    probs = F.softmax(cls_logits, dim=-1)[:, :-1]
    masks = resize_to_original(mask_logits, stride, image_size, out_size).sigmoid_()
    return torch.einsum("qc,qhw->chw", probs, masks)


def panoptic_inference(cls_logits, mask_logits, stride, image_size, out_size,
                       is_thing: Sequence[bool], object_mask_threshold: float,
                       overlap_threshold: float, merge_stuff: bool = False):
    """MaskFormer's panoptic merge on the resized mask logits.

    Queries whose best class is not background and scores above ``object_mask_threshold``
    compete per pixel by score x mask probability; a segment survives if it keeps at least
    ``overlap_threshold`` of its own (prob >= 0.5) area and is non-empty; all segments of
    one stuff class share one id. With ``merge_stuff`` off this is Mask2Former's
    ``panoptic_inference``.

    ``merge_stuff`` applies the panoptic MERGE at inference as in training: the queries of
    one stuff class are one segment, whose own area is the union of theirs, so the overlap
    test is passed or failed by the merged segment (a member covering part of its class's
    region is not dropped, leaving a hole, for losing pixels to its co-members).

    Returns:
        (panoptic_seg (height, width) int32, segments_info list of dicts with ``id``,
        ``category_id`` (contiguous), ``isthing``).
    """
    height, width = out_size
    probs = F.softmax(cls_logits, dim=-1)
    num_classes = probs.shape[-1] - 1
    scores, labels = probs.max(-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32, device=mask_logits.device)
    segments_info: List[dict] = []
    if not keep.any():
        return panoptic_seg, segments_info
    scores, labels = scores[keep], labels[keep]
    probs = resize_to_original(mask_logits[keep], stride, image_size, out_size).sigmoid_()
    num_kept = probs.shape[0]
    own = probs >= 0.5  # (N, height, width)
    original_area = _count_true(own)
    owner = probs.mul_(scores[:, None, None]).argmax(0)  # (height, width) index into kept
    del probs
    # Every pixel has exactly one owner, so per-segment pixel sets are disjoint: areas are
    # bincounts over the owner map and the id map is one lookup, instead of (N, H, W)
    # "assigned" / "visible" masks and one masked write per segment.
    visible_pixel = own.gather(0, owner[None])[0]  # own[owner[p], p]
    assigned_area = torch.bincount(owner.flatten(), minlength=num_kept)
    visible_area = torch.bincount(owner[visible_pixel], minlength=num_kept)
    if merge_stuff:
        # Per stuff class: areas of the merged segment, given to each of its members.
        thing_of_kept = torch.as_tensor([bool(is_thing[c]) for c in labels.tolist()])
        for cls in sorted({c for c, t in zip(labels.tolist(), thing_of_kept.tolist()) if not t}):
            members = ((labels == cls) & ~thing_of_kept.to(labels.device)).nonzero().squeeze(1)
            original_area[members] = int(own[members].any(0).sum())
            assigned_area[members] = int(assigned_area[members].sum())
            visible_area[members] = int(visible_area[members].sum())
    del own
    segment_of_query = torch.zeros(num_kept + 1, dtype=torch.int32)
    stuff_ids = {}
    next_id = 1
    for k, (area, orig, assigned, cls) in enumerate(zip(
            visible_area.tolist(), original_area.tolist(), assigned_area.tolist(),
            labels.tolist())):
        if area == 0 or orig == 0 or assigned == 0:
            continue
        if assigned / orig < overlap_threshold:
            continue
        thing = bool(is_thing[cls])
        if not thing and cls in stuff_ids:
            segment_of_query[k] = stuff_ids[cls]
            continue
        segment_of_query[k] = next_id
        if not thing:
            stuff_ids[cls] = next_id
        segments_info.append({"id": next_id, "category_id": cls, "isthing": thing})
        next_id += 1
    segment_of_query = segment_of_query.to(owner.device)
    # Pixels whose owner does not cover them (prob < 0.5) stay 0 (index num_kept -> 0).
    panoptic_seg = segment_of_query[torch.where(visible_pixel, owner, num_kept)]
    return panoptic_seg, segments_info


def _count_true(masks: torch.Tensor) -> torch.Tensor:
    """Pixels set in each of N bool masks (N, ...), int32.

    A sum of bools converts its input to the sum's dtype first; in chunks of ~4 M pixels that
    copy stays in cache (100 masks of 512x512: 12 instead of 75 ms).
    """
    flat = masks.flatten(1)
    chunk = max(1, (4 << 20) // max(1, flat.shape[1]))
    return torch.cat([part.sum(1, dtype=torch.int32) for part in flat.split(chunk)])


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes (pixel edges, exclusive max) of binary masks (N, H, W); empty -> 0."""
    if masks.numel() == 0:
        return masks.new_zeros((masks.shape[0], 4), dtype=torch.float32)
    # max over bytes: bool any() reduces rows of a few hundred pixels ~50x slower on CPU.
    as_bytes = masks.view(torch.uint8) if masks.dtype == torch.bool else (masks != 0).byte()
    rows = as_bytes.amax(2).bool()  # (N, H)
    cols = as_bytes.amax(1).bool()  # (N, W)
    H, W = masks.shape[-2:]
    y_idx = torch.arange(H, device=masks.device)
    x_idx = torch.arange(W, device=masks.device)
    big = max(H, W) + 1
    y0 = torch.where(rows, y_idx, big).min(1).values
    y1 = torch.where(rows, y_idx, -1).max(1).values + 1
    x0 = torch.where(cols, x_idx, big).min(1).values
    x1 = torch.where(cols, x_idx, -1).max(1).values + 1
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    boxes[~rows.any(1)] = 0
    return boxes


def instance_inference(cls_logits, mask_logits, stride, image_size, out_size,
                       is_thing: Sequence[bool], instances_per_image: int) -> Instances:
    """Top-k (query, class) pairs as detectron2 ``Instances`` with masks and real boxes.

    As Mask2Former: the ``instances_per_image`` best (query, class) pairs by class probability
    over ALL classes, then pairs of stuff classes are dropped (for a panoptic vocabulary fewer
    than k remain); mask = resized logits > 0; score = class probability x mean mask
    probability inside the mask. Boxes are the masks' tight boxes (as detectron2's
    ``BitMasks.get_bounding_boxes``; Mask2Former leaves them zero), so box AP is meaningful.

    Args:
        cls_logits: (Q, C+1), background last.
        mask_logits: (Q, h, w) at mask resolution.
        stride, image_size, out_size: see :func:`resize_to_original`.
        is_thing: C flags; pairs of classes whose flag is False are dropped.
        instances_per_image: k.
    """
    height, width = out_size
    probs = F.softmax(cls_logits, dim=-1)[:, :-1]  # (Q, C)
    num_classes = probs.shape[1]
    top_scores, top_idx = probs.flatten().topk(min(instances_per_image, probs.numel()),
                                               sorted=True)
    query_idx = torch.div(top_idx, num_classes, rounding_mode="floor")
    classes = top_idx % num_classes
    thing = torch.as_tensor(list(is_thing), dtype=torch.bool, device=probs.device)
    keep = thing[classes]
    top_scores, query_idx, classes = top_scores[keep], query_idx[keep], classes[keep]
    # Upsample each selected query once even if it is paired with several classes, in
    # chunks: full-resolution float masks of all queries are the largest temporaries of
    # inference, and chunks small enough for the allocator to reuse avoid page faults.
    unique_q, inverse = torch.unique(query_idx, return_inverse=True)
    binary = torch.empty((len(unique_q), height, width), dtype=torch.bool,
                         device=mask_logits.device)
    mask_score = mask_logits.new_empty(len(unique_q))
    chunk = max(1, (4 << 20) // max(1, height * width))  # ~16 MB of float32 per chunk
    for start in range(0, len(unique_q), chunk):
        q = unique_q[start:start + chunk]
        logits_hw = resize_to_original(mask_logits[q], stride, image_size, out_size)
        torch.gt(logits_hw, 0, out=binary[start:start + chunk])  # sigmoid > 0.5
        inside = binary[start:start + chunk]
        probs_in = logits_hw.sigmoid_().mul_(inside)
        mask_score[start:start + chunk] = (
            probs_in.flatten(1).sum(1) / (_count_true(inside) + 1e-6))
    result = Instances((height, width))
    result.pred_masks = binary[inverse]
    result.pred_boxes = Boxes(masks_to_boxes(binary)[inverse])
    result.scores = top_scores * mask_score[inverse]
    result.pred_classes = classes
    return result


def image_outputs(cls_logits, mask_logits, stride, image_size, out_size,
                  outputs: Sequence[str], is_thing: Sequence[bool],
                  object_mask_threshold: float, overlap_threshold: float,
                  panoptic_merge_stuff: bool, instances_per_image: int) -> dict:
    """The outputs of one image named in ``outputs``: what ``DaTaSeg`` inference returns.

    The one dispatch of the model's post-processing, also run on the logits of the exported
    network (``dataseg.tools.export.OnnxPredictor``).

    Args:
        cls_logits, mask_logits, stride, image_size, out_size: see :func:`semantic_inference`.
        outputs: keys among ``dataseg.tasks.TEST_OUTPUTS``.
        is_thing: C thing flags (panoptic and instances).
        object_mask_threshold, overlap_threshold: see :func:`panoptic_inference`.
        panoptic_merge_stuff: ``merge_stuff`` of :func:`panoptic_inference`.
        instances_per_image: see :func:`instance_inference`.
    Returns:
        dict with ``sem_seg``, ``panoptic_seg`` and / or ``instances``.
    """
    result = {}
    args = (cls_logits, mask_logits, stride, image_size, out_size)
    if "sem_seg" in outputs:
        result["sem_seg"] = semantic_inference(*args)
    if "panoptic_seg" in outputs:
        result["panoptic_seg"] = panoptic_inference(
            *args, is_thing, object_mask_threshold, overlap_threshold, panoptic_merge_stuff)
    if "instances" in outputs:
        result["instances"] = instance_inference(*args, is_thing, instances_per_image)
    return result
