"""Pixel decoder and query decoder in isolation."""

import pytest
import torch

from detectron2.layers import ShapeSpec

from dataseg.modeling.pixel_decoder import MSDeformAttnPixelDecoder
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


def test_pixel_decoder_fast_paths_agree_with_the_plain_ones():
    feats = features()
    fast = pixel_decoder(fast_paths="auto")
    ref = pixel_decoder(fast_paths="off")
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
def test_head_broadcast_fast_path_equals_multihead_attention(with_mask):
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
            out = multihead_attention(attn, *inputs, hidden=hidden, fast_paths="auto")
        else:
            mask = None if hidden is None else hidden.repeat_interleave(4, dim=0)
            out = attn(*inputs, attn_mask=mask, need_weights=False)[0]
        out.pow(2).sum().backward()
        outs.append(out.detach())
        grads.append([t.grad for t in inputs] + [p.grad.clone() for p in attn.parameters()])
    torch.testing.assert_close(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_encoder_initialisation_is_mask2formers():
    """Xavier-uniform on every matrix of the encoder (the FFN's too), then the deformable
    attention's own reset (zero offset and attention-weight matrices)."""
    from dataseg.modeling.pixel_decoder.deformable_encoder import (
        DeformableEncoder,
        DeformableEncoderLayer,
    )

    torch.manual_seed(0)
    encoder = DeformableEncoder(DeformableEncoderLayer(d_model=64, dim_feedforward=256), 2)
    for layer in encoder.layers:
        for linear in (layer.linear1, layer.linear2, layer.self_attn.value_proj):
            fan_out, fan_in = linear.weight.shape
            bound = (6.0 / (fan_in + fan_out)) ** 0.5
            w = linear.weight
            # Uniform(-b, b): inside the bound and with its standard deviation b / sqrt(3)
            # (nn.Linear's default would give sqrt(1 / (3 fan_in)): 2x smaller for linear2).
            assert w.abs().max() <= bound
            torch.testing.assert_close(w.std().item(), bound / 3 ** 0.5, rtol=0.05, atol=0)
        assert not layer.self_attn.sampling_offsets.weight.any()
        assert not layer.self_attn.attention_weights.weight.any()
