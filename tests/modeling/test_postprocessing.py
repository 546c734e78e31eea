"""Post-processing equals Mask2Former's inference (tests/reference.py, written from its
published formulas) on the same logits, at outputs smaller and larger than the network input,
on padded batches and on images where nothing is kept."""

import pytest
import torch
from torch.nn import functional as F

from detectron2.structures import BitMasks

from dataseg.modeling.postprocessing import (
    _count_true,
    instance_inference,
    masks_to_boxes,
    panoptic_inference,
    resize_to_original,
    semantic_inference,
)
from reference import (
    mask2former_instances,
    mask2former_panoptic,
    mask2former_resize,
    mask2former_semantic,
)

STRIDE = 4
# (padded input, unpadded input, output): the batch pads to 32; outputs 0.75x, 1x and 1.5x
# the input, also at sizes that do not divide evenly.
GEOMETRIES = [
    ((96, 128), (90, 101), (68, 76)),
    ((96, 128), (90, 101), (90, 101)),
    ((96, 128), (90, 101), (135, 152)),
    ((64, 64), (64, 64), (48, 48)),
    ((64, 96), (37, 93), (56, 140)),
]


def _predictions(seed, padded, num_queries=24, num_classes=9):
    """Class logits (Q, C+1) with confident and background-picking queries, and smooth mask
    logits (Q, h, w) at stride 4 of the padded input."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(num_queries, num_classes + 1, generator=g)
    confident = torch.rand(num_queries, generator=g) < 0.7
    best = torch.randint(0, num_classes + 1, (num_queries,), generator=g)
    logits[confident, best[confident]] += 8.0
    h, w = padded[0] // STRIDE, padded[1] // STRIDE
    coarse = torch.randn(num_queries, 1, max(2, h // 4), max(2, w // 4), generator=g) * 6
    masks = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
    # Negative away from a few blobs per query, so that segments survive the overlap test.
    masks = masks - 6.0 + 0.5 * torch.randn(num_queries, h, w, generator=g)
    is_thing = (torch.rand(num_classes, generator=g) < 0.5).tolist()
    return logits, masks, is_thing


@pytest.mark.parametrize("padded,image_size,out_size", GEOMETRIES)
def test_resize_is_the_upsample_crop_resize_chain(padded, image_size, out_size):
    _, masks, _ = _predictions(0, padded)
    ours = resize_to_original(masks, STRIDE, image_size, out_size)
    assert torch.equal(ours, mask2former_resize(masks, padded, image_size, out_size))
    # (N, C, h, w) maps as well.
    assert torch.equal(resize_to_original(masks[None], STRIDE, image_size, out_size)[0], ours)


@pytest.mark.parametrize("padded,image_size,out_size", GEOMETRIES)
@pytest.mark.parametrize("seed", range(2))
def test_semantic_equals_mask2former(padded, image_size, out_size, seed):
    logits, masks, _ = _predictions(seed, padded)
    ours = semantic_inference(logits, masks, STRIDE, image_size, out_size)
    ref = mask2former_semantic(logits, mask2former_resize(masks, padded, image_size, out_size))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert (ours.argmax(0) == ref.argmax(0)).float().mean() >= 0.9999


@pytest.mark.parametrize("padded,image_size,out_size", GEOMETRIES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("overlap", [0.0, 0.8])
def test_panoptic_equals_mask2former(padded, image_size, out_size, seed, overlap):
    logits, masks, is_thing = _predictions(seed, padded)
    pan, info = panoptic_inference(logits, masks, STRIDE, image_size, out_size, is_thing,
                                   0.8, overlap, merge_stuff=False)
    ref_pan, ref_info = mask2former_panoptic(
        logits, mask2former_resize(masks, padded, image_size, out_size), is_thing, 0.8, overlap)
    assert info, "the case should keep segments"
    assert pan.dtype == torch.int32 and torch.equal(pan, ref_pan)
    assert info == ref_info


@pytest.mark.parametrize("merge_stuff", [False, True])
def test_panoptic_nothing_kept(merge_stuff):
    # Every query picks background: an empty image, as Mask2Former returns it.
    logits = torch.zeros(5, 4)
    logits[:, -1] = 5.0
    pan, info = panoptic_inference(logits, torch.zeros(5, 4, 4), STRIDE, (16, 16), (12, 12),
                                   [True] * 3, 0.8, 0.8, merge_stuff)
    ref_pan, ref_info = mask2former_panoptic(logits, torch.zeros(5, 12, 12), [True] * 3, 0.8,
                                             0.8)
    assert info == ref_info == [] and torch.equal(pan, ref_pan) and pan.shape == (12, 12)


@pytest.mark.parametrize("padded,image_size,out_size", GEOMETRIES)
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("topk", [10, 100])
def test_instances_equal_mask2former(padded, image_size, out_size, seed, topk):
    logits, masks, is_thing = _predictions(seed, padded)
    inst = instance_inference(logits, masks, STRIDE, image_size, out_size, is_thing, topk)
    scores, classes, binary = mask2former_instances(
        logits, mask2former_resize(masks, padded, image_size, out_size), is_thing, topk)
    # The top-k is over all classes, then stuff is dropped: fewer than k remain.
    assert len(inst) == len(classes) < min(topk, logits[:, :-1].numel())
    assert torch.equal(inst.pred_classes, classes)
    assert torch.equal(inst.pred_masks, binary)
    torch.testing.assert_close(inst.scores, scores, rtol=1e-5, atol=1e-7)
    boxes = BitMasks(binary).get_bounding_boxes().tensor
    assert torch.equal(inst.pred_boxes.tensor, boxes)
    assert inst.image_size == out_size


def test_instances_of_a_stuff_only_vocabulary_are_empty():
    logits, masks, _ = _predictions(0, (64, 64), num_classes=3)
    inst = instance_inference(logits, masks, STRIDE, (64, 64), (48, 48), [False] * 3, 10)
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 48, 48)


def test_panoptic_merges_stuff_and_keeps_things_apart():
    # Q=4 queries, C=3 classes (thing, thing, stuff) + background.
    logits = torch.full((4, 4), -10.0)
    logits[0, 2] = logits[1, 2] = 10.0  # two stuff queries of class 2
    logits[2, 0] = logits[3, 0] = 10.0  # two thing queries of class 0
    masks = torch.full((4, 8, 8), -10.0)
    masks[0, :4, :4] = masks[1, :4, 4:] = 10.0
    masks[2, 4:, :4] = masks[3, 4:, 4:] = 10.0
    pan, info = panoptic_inference(logits, masks, 4, (32, 32), (32, 32),
                                   [True, True, False], 0.8, 0.8)
    stuff = [s for s in info if not s["isthing"]]
    things = [s for s in info if s["isthing"]]
    assert len(stuff) == 1 and len(things) == 2
    # Away from the blurred mask borders: one stuff id on top, two thing ids below.
    assert (pan[:14] == stuff[0]["id"]).all()
    assert set(pan[18:].unique().tolist()) == {s["id"] for s in things}


def test_semantic_and_instance_outputs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    masks = torch.randn(6, 8, 8, generator=g) * 5
    sem = semantic_inference(logits, masks, 4, (30, 32), (60, 64))
    assert sem.shape == (3, 60, 64) and sem.min() >= 0 and sem.sum(0).max() <= 6
    inst = instance_inference(logits, masks, 4, (30, 32), (60, 64), [True] * 3, 10)
    assert len(inst) == 10 and inst.pred_masks.shape == (10, 60, 64)
    torch.testing.assert_close(inst.pred_boxes.tensor, masks_to_boxes(inst.pred_masks))
    assert (inst.scores[:-1] >= 0).all() and (inst.scores <= 1).all()


def test_panoptic_merge_stuff_judges_the_class_segment_not_each_query():
    # Two queries of stuff class 0 on one 8 x 8 region: q0 claims all of it, q1 (more
    # confident) the right half. Per query, q0 keeps half of its own area (< 0.8) and is
    # dropped: the left half becomes void. As one merged segment, the class keeps it all.
    logits = torch.full((2, 2), -10.0)
    logits[0, 0], logits[1, 0] = 4.0, 10.0
    masks = torch.full((2, 8, 8), -10.0)
    masks[0] = 10.0
    masks[1, :, 4:] = 12.0
    masks[1, :, :4] = -12.0
    per_query, _ = panoptic_inference(logits, masks, 4, (32, 32), (32, 32), [False], 0.8, 0.8)
    merged, info = panoptic_inference(logits, masks, 4, (32, 32), (32, 32), [False], 0.8, 0.8,
                                      merge_stuff=True)
    assert (per_query[:, :12] == 0).all() and (per_query[:, 20:] > 0).all()
    assert len(info) == 1 and (merged == info[0]["id"]).all()


def test_masks_to_boxes_matches_detectron2():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 20, 30, generator=g) > 0.97
    masks[0] = False
    assert torch.equal(masks_to_boxes(masks), BitMasks(masks).get_bounding_boxes().tensor)


@pytest.mark.parametrize("shape", [(0, 5, 5), (3, 7, 9), (40, 300, 400)])
def test_count_true_matches_sum(shape):
    masks = torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.4
    assert torch.equal(_count_true(masks), masks.flatten(1).sum(1).int())
