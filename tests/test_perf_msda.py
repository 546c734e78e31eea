"""The deformable-attention fast path: compact int32 corner indices change nothing."""

import torch

from dataseg.modeling.ops.ms_deform_attn_func import (
    _corners,
    _padded_table,
    _shapes_as_list,
    ms_deform_attn_embedding_bag,
    ms_deform_attn_grid_sample,
)


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
    table, s_pad = _padded_table(value, _shapes_as_list(shapes))
    index, *_ = _corners(shapes, loc, s_pad)
    assert index.dtype == torch.int32
    assert int(index.min()) >= 0 and int(index.max()) < table.shape[0]


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
