"""Pixel decoder, query decoder and post-processing in isolation."""

import pytest
import torch
from torch.nn import functional as F

from detectron2.layers import ShapeSpec
from detectron2.structures import BitMasks

from dataseg.modeling.pixel_decoder import MSDeformAttnPixelDecoder
from dataseg.modeling.postprocessing import (
    instance_inference,
    masks_to_boxes,
    panoptic_inference,
    resize_to_original,
    semantic_inference,
)
from dataseg.modeling.transformer_decoder import MaskedAttentionDecoder

SHAPES = {f"res{i}": ShapeSpec(channels=8 * 2 ** i, stride=2 ** i) for i in range(2, 6)}


def features(h=64, w=96, batch=2):
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(batch, s.channels, h // s.stride, w // s.stride, generator=g)
            for k, s in SHAPES.items()}


def pixel_decoder(**kw):
    torch.manual_seed(0)
    args = dict(in_features=list(SHAPES), deformable_in_features=["res3", "res4", "res5"],
                conv_dim=32, mask_dim=16, num_encoder_layers=2, nheads=4, num_points=2,
                dim_feedforward=64)
    args.update(kw)
    return MSDeformAttnPixelDecoder(SHAPES, **args)


def test_pixel_decoder_shapes():
    mask_features, multi_scale = pixel_decoder()(features())
    assert mask_features.shape == (2, 16, 16, 24)
    assert [tuple(x.shape) for x in multi_scale] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]


def test_pixel_decoder_msda_impls_agree():
    feats = features()
    fast = pixel_decoder(msda_impl="auto")
    ref = pixel_decoder(msda_impl="grid_sample")
    ref.load_state_dict(fast.state_dict())
    a, b = fast(feats), ref(feats)
    torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)


def test_pixel_decoder_rejects_missing_features():
    with pytest.raises(ValueError, match="IN_FEATURES"):
        pixel_decoder(in_features=["p2", "p3", "p4", "p5"], deformable_in_features=["p3"])


def test_decoder_predictions_and_attention_mask():
    torch.manual_seed(0)
    dec = MaskedAttentionDecoder(32, mask_dim=16, num_queries=5, hidden_dim=32, nheads=4,
                                 dim_feedforward=64, num_layers=4, mask_head_layers=3)
    mask_features, multi_scale = pixel_decoder()(features())
    preds = dec(multi_scale, mask_features)
    assert len(preds) == 5  # initial queries + one per layer
    for p in preds:
        assert p["query_features"].shape == (2, 5, 32)
        assert p["pred_masks"].shape == (2, 5, 16, 24)
    # A query whose mask is background everywhere must still see every pixel.
    _, attn_mask = dec._predict(torch.zeros(2, 5, 32), -torch.ones(2, 16, 16, 24), (4, 6))
    masks = dec._predict(torch.zeros(2, 5, 32), -torch.ones(2, 16, 16, 24), (4, 6))[0]
    hidden = masks["pred_masks"] < 0
    assert attn_mask.shape == (2, 5, 24)  # one mask for all heads
    assert (~attn_mask[hidden.flatten(2).all(-1)]).all()


@pytest.mark.parametrize("with_mask", [False, True])
def test_head_shared_attention_equals_multihead_attention(with_mask):
    from dataseg.modeling.transformer_decoder.masked_attention_decoder import (
        multihead_attention,
    )

    torch.manual_seed(0)
    attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    q, k = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    v = torch.randn(2, 7, 32)
    hidden = (torch.rand(2, 5, 7) > 0.6) if with_mask else None
    if with_mask:
        hidden[:, :, 0] = False  # every query sees something
    outs, grads = [], []
    for fn in ("ours", "torch"):
        inputs = [t.clone().requires_grad_(True) for t in (q, k, v)]
        attn.zero_grad()
        if fn == "ours":
            out = multihead_attention(attn, *inputs, hidden=hidden)
        else:
            mask = None if hidden is None else hidden.repeat_interleave(4, dim=0)
            out = attn(*inputs, attn_mask=mask, need_weights=False)[0]
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in inputs] + [p.grad.clone() for p in attn.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_resize_to_original_matches_two_step_resize():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, 16, generator=g)  # mask resolution of a 64x64 padded image
    image_size, out_size = (50, 60), (100, 120)
    two_step = F.interpolate(x[None], size=(64, 64), mode="bilinear", align_corners=False)
    two_step = F.interpolate(two_step[..., :50, :60], size=out_size, mode="bilinear",
                             align_corners=False)[0]
    one_step = resize_to_original(x, 4, image_size, out_size)
    assert one_step.shape == (3, 100, 120)
    # Same geometry; the single interpolation is only smoother than the two-step chain.
    assert (one_step - two_step).abs().mean() < 0.05


def test_masks_to_boxes_matches_detectron2():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 20, 30, generator=g) > 0.97
    masks[0] = False
    torch.testing.assert_close(masks_to_boxes(masks), BitMasks(masks).get_bounding_boxes().tensor)


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
