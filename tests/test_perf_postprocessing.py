"""Vectorised panoptic post-processing equals the straightforward per-segment loop."""

import pytest
import torch
from torch.nn import functional as F

from dataseg.modeling.postprocessing import (
    _count_true,
    instance_inference,
    panoptic_inference,
    resize_to_original,
)


def _panoptic_reference(cls_logits, mask_logits, stride, image_size, out_size, is_thing,
                        object_mask_threshold, overlap_threshold):
    """MaskFormer-style merge written plainly: (N, H, W) masks, one write per segment."""
    height, width = out_size
    probs = F.softmax(cls_logits, dim=-1)
    scores, labels = probs.max(-1)
    keep = (labels != probs.shape[-1] - 1) & (scores > object_mask_threshold)
    panoptic_seg = torch.zeros((height, width), dtype=torch.int32)
    segments_info = []
    if not keep.any():
        return panoptic_seg, segments_info
    scores, labels = scores[keep], labels[keep]
    masks = resize_to_original(mask_logits[keep], stride, image_size, out_size).sigmoid()
    owner = (masks * scores[:, None, None]).argmax(0)
    own = masks >= 0.5
    assigned = owner[None] == torch.arange(masks.shape[0])[:, None, None]
    visible = assigned & own
    stuff_ids, next_id = {}, 1
    for k in range(masks.shape[0]):
        area, orig, asg = int(visible[k].sum()), int(own[k].sum()), int(assigned[k].sum())
        if area == 0 or orig == 0 or asg == 0 or asg / orig < overlap_threshold:
            continue
        cls = int(labels[k])
        thing = bool(is_thing[cls])
        if not thing and cls in stuff_ids:
            panoptic_seg[visible[k]] = stuff_ids[cls]
            continue
        panoptic_seg[visible[k]] = next_id
        if not thing:
            stuff_ids[cls] = next_id
        segments_info.append({"id": next_id, "category_id": cls, "isthing": thing})
        next_id += 1
    return panoptic_seg, segments_info


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.8])
def test_panoptic_inference_matches_reference(seed, overlap):
    g = torch.Generator().manual_seed(seed)
    Q, C, h, w = 30, 12, 16, 20
    logits = torch.randn(Q, C + 1, generator=g)
    confident = torch.rand(Q, generator=g) < 0.7
    best = torch.randint(0, C + 1, (Q,), generator=g)  # some pick background
    logits[confident, best[confident]] += 8.0
    masks = torch.randn(Q, h, w, generator=g) * 3
    is_thing = (torch.rand(C, generator=g) < 0.5).tolist()
    args = (logits, masks, 4, (60, 77), (90, 101), is_thing, 0.8, overlap)
    pan, info = panoptic_inference(*args)
    ref_pan, ref_info = _panoptic_reference(*args)
    assert pan.dtype == ref_pan.dtype and torch.equal(pan, ref_pan)
    assert info == ref_info


def test_panoptic_inference_nothing_kept():
    pan, info = panoptic_inference(torch.zeros(5, 4), torch.zeros(5, 4, 4), 4, (16, 16),
                                   (16, 16), [True] * 3, 0.8, 0.8)
    assert info == [] and not pan.any()


def test_instance_scores_match_the_plain_formula():
    """Top-k (query, thing class) by class probability; score = class probability x mean
    mask probability inside the binarised full-size mask."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g)
    masks = torch.randn(7, 9, 10, generator=g) * 4
    is_thing = [True, False, True, True]
    inst = instance_inference(logits, masks, 4, (34, 40), (51, 60), is_thing, 12)
    probs = F.softmax(logits, -1)[:, :-1]
    probs[:, 1] = -1.0  # stuff is not an instance
    top, idx = probs.flatten().topk(12)
    query, cls = idx // 4, idx % 4
    full = resize_to_original(masks, 4, (34, 40), (51, 60)).sigmoid()
    binary = full > 0.5
    inside = (full * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    assert torch.equal(inst.pred_classes, cls)
    assert torch.equal(inst.pred_masks, binary[query])
    torch.testing.assert_close(inst.scores, top * inside[query], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(0, 5, 5), (3, 7, 9), (40, 300, 400)])
def test_count_true_matches_sum(shape):
    masks = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.4
    torch.testing.assert_close(_count_true(masks), masks.flatten(1).sum(1).int())
