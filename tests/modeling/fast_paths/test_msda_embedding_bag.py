"""The deformable-attention fast path: compact int32 corner indices change nothing."""

import pytest
import torch

from dataseg.modeling.fast_paths.msda_embedding_bag import (
    _corner_rows,
    _corners,
    _padded_table,
    ms_deform_attn_embedding_bag,
)
from dataseg.modeling.ops import ms_deform_attn_grid_sample


def _inputs(seed=0, B=2, M=2, D=8, shapes=((6, 7), (3, 4)), Q=11, P=3):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    value = torch.randn(B, S, M, D, generator=g)
    # Some points far outside the map: their corners must read the zero border.
    loc = torch.rand(B, Q, M, len(shapes), P, 2, generator=g) * 1.6 - 0.3
    attn = torch.rand(B, Q, M, len(shapes), P, generator=g)
    return value, list(shapes), loc, attn


def test_corner_indices_are_int32_and_index_the_table():
    value, shapes, loc, _ = _inputs()
    table, s_pad = _padded_table(value, [list(s) for s in shapes])
    row, *_ = _corners(shapes, loc, s_pad)
    index = _corner_rows(row, shapes)
    assert row.dtype == index.dtype == torch.int32
    assert index.shape == row.shape + (4,)
    assert int(index.min()) >= 0 and int(index.max()) < table.shape[0]


def test_backward_keeps_one_row_per_sample_not_four():
    value, shapes, loc, attn = _inputs()
    inputs = [t.requires_grad_() for t in (value, loc, attn)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ms_deform_attn_embedding_bag(inputs[0], shapes, *inputs[1:])
    index = [t for t in saved if not t.is_floating_point() and t.dtype != torch.bool]
    assert [(t.dtype, t.shape) for t in index] == [(torch.int32, attn.shape)]


@pytest.mark.parametrize("requires", [(True, False, False), (False, True, True)])
def test_partial_gradients_match_grid_sample(requires):
    # Points crowded into a small map, many clamped onto the border: table rows are shared
    # by many samples and by several corners, and corners land on every border row/column.
    value, shapes, loc, attn = _inputs(2, shapes=((3, 5), (2, 2), (1, 3)), Q=40, P=4)
    loc = loc * 2 - 0.5
    results = []
    for fn in (ms_deform_attn_embedding_bag, ms_deform_attn_grid_sample):
        inputs = [t.clone().requires_grad_(r) for t, r in zip((value, loc, attn), requires)]
        out = fn(inputs[0], shapes, *inputs[1:])
        grad_out = torch.linspace(-1, 1, out.numel()).view_as(out)
        results.append(torch.autograd.grad(out, [t for t in inputs if t.requires_grad], grad_out))
    for fast, ref in zip(*results):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_fast_path_matches_grid_sample_values_and_grads():
    value, shapes, loc, attn = _inputs(1)
    results = []
    for fn in (ms_deform_attn_embedding_bag, ms_deform_attn_grid_sample):
        v, lc, a = (t.clone().requires_grad_(True) for t in (value, loc, attn))
        out = fn(v, shapes, lc, a)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), v.grad, lc.grad, a.grad))
    for fast, ref in zip(*results):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_recomputed_ffn_matches_and_keeps_less_for_backward():
    from dataseg.modeling.pixel_decoder.deformable_encoder import DeformableEncoderLayer

    torch.manual_seed(0)
    plain = DeformableEncoderLayer(d_model=16, dim_feedforward=64, n_levels=2, n_heads=2,
                                   n_points=2, fast_paths="off")
    recompute = DeformableEncoderLayer(d_model=16, dim_feedforward=64, n_levels=2, n_heads=2,
                                       n_points=2, fast_paths="auto")
    recompute.load_state_dict(plain.state_dict())
    shapes = [(4, 5), (2, 3)]
    S = sum(h * w for h, w in shapes)
    g = torch.Generator().manual_seed(1)
    src = torch.randn(2, S, 16, generator=g)
    pos = torch.randn(2, S, 16, generator=g)
    ref = torch.rand(2, S, 2, 2, generator=g)
    results = []
    for layer in (plain, recompute):
        x = src.clone().requires_grad_(True)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.numel()) or t, lambda t: t):
            out = layer(x, pos, ref, shapes)
        out.pow(2).sum().backward()
        results.append((out.detach(), x.grad, [p.grad for p in layer.parameters()],
                        sum(saved)))
    (out_a, gx_a, gp_a, saved_a), (out_b, gx_b, gp_b, saved_b) = results
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(gx_a, gx_b)
    for a, b in zip(gp_a, gp_b):
        torch.testing.assert_close(a, b)
    # The hidden activation (2 x S x 64 values) is no longer kept.
    assert saved_a - saved_b >= 2 * S * 64
