"""Multi-scale deformable attention: fast path vs grid_sample vs a naive reference."""

import pytest
import torch

from dataseg.modeling.fast_paths.msda_embedding_bag import ms_deform_attn_embedding_bag
from dataseg.modeling.ops import MSDeformAttn, ms_deform_attn_grid_sample


def naive_msda(value, shapes, locations, weights):
    """Loop-by-loop bilinear sampling with zeros outside (grid_sample, align_corners=False)."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = locations.shape
    out = value.new_zeros(B, Q, M, D)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)

    def pixel(b, m, lvl, y, x):
        h, w = shapes[lvl]
        if 0 <= y < h and 0 <= x < w:
            return value[b, starts[lvl] + y * w + x, m]
        return value.new_zeros(D)

    for b in range(B):
        for q in range(Q):
            for m in range(M):
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(P):
                        x = locations[b, q, m, lvl, p, 0] * w - 0.5
                        y = locations[b, q, m, lvl, p, 1] * h - 0.5
                        x0, y0 = int(torch.floor(x)), int(torch.floor(y))
                        fx, fy = x - x0, y - y0
                        sample = (pixel(b, m, lvl, y0, x0) * (1 - fy) * (1 - fx)
                                  + pixel(b, m, lvl, y0, x0 + 1) * (1 - fy) * fx
                                  + pixel(b, m, lvl, y0 + 1, x0) * fy * (1 - fx)
                                  + pixel(b, m, lvl, y0 + 1, x0 + 1) * fy * fx)
                        out[b, q, m] = out[b, q, m] + weights[b, q, m, lvl, p] * sample
    return out.reshape(B, Q, M * D)


def random_inputs(B, M, D, shapes, Q, P, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in shapes)
    L = len(shapes)
    value = torch.randn(B, S, M, D, generator=g, dtype=dtype)
    # Include points outside [0, 1] (zeros padding) and near the borders.
    loc = torch.rand(B, Q, M, L, P, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    attn = torch.rand(B, Q, M, L, P, generator=g, dtype=dtype)
    return value, loc, attn


CASES = [
    (1, 1, 2, [(3, 4)], 3, 1),
    (2, 2, 3, [(4, 5), (2, 3)], 4, 2),
    (1, 3, 4, [(6, 6), (3, 3), (2, 1)], 5, 3),
]


@pytest.mark.parametrize("B,M,D,shapes,Q,P", CASES)
def test_forward_matches_naive_and_grid_sample(B, M, D, shapes, Q, P):
    value, loc, attn = random_inputs(B, M, D, shapes, Q, P)
    ref = naive_msda(value, shapes, loc, attn)
    torch.testing.assert_close(ms_deform_attn_grid_sample(value, shapes, loc, attn), ref)
    torch.testing.assert_close(ms_deform_attn_embedding_bag(value, shapes, loc, attn), ref)


@pytest.mark.parametrize("B,M,D,shapes,Q,P", CASES[1:])
def test_gradients_match_naive(B, M, D, shapes, Q, P):
    inputs = [t.requires_grad_() for t in random_inputs(B, M, D, shapes, Q, P, seed=1)]
    grad_out = torch.randn(B, Q, M * D, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(2))
    ref = torch.autograd.grad(naive_msda(inputs[0], shapes, *inputs[1:]), inputs, grad_out)
    fast = torch.autograd.grad(
        ms_deform_attn_embedding_bag(inputs[0], shapes, *inputs[1:]), inputs, grad_out)
    for r, f in zip(ref, fast):
        torch.testing.assert_close(f, r)


def test_gradcheck_fast_path():
    value, loc, attn = random_inputs(2, 2, 3, [(3, 4), (2, 2)], 3, 2, seed=3)
    # Keep points away from pixel-centre lines, where bilinear sampling is not differentiable.
    loc = (torch.round(loc * 8) / 8 + 0.031).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, l, a: ms_deform_attn_embedding_bag(v, [(3, 4), (2, 2)], l, a),
        (value.requires_grad_(), loc, attn.requires_grad_()),
    )


def test_fast_path_float32_realistic_shapes_match_grid_sample():
    shapes = [(8, 8), (16, 16), (32, 32)]
    value, loc, attn = random_inputs(2, 4, 8, shapes, 50, 4, seed=4, dtype=torch.float32)
    inputs = [value.requires_grad_(), loc.requires_grad_(), attn.requires_grad_()]
    out_ref = ms_deform_attn_grid_sample(inputs[0], shapes, *inputs[1:])
    out = ms_deform_attn_embedding_bag(inputs[0], shapes, *inputs[1:])
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(out_ref, inputs, g)):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-4)


def test_module_fast_path_agrees_with_the_plain_path():
    torch.manual_seed(0)
    shapes = [(4, 4), (2, 2)]
    S = sum(h * w for h, w in shapes)
    fast = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=2, fast_paths="auto")
    slow = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=2, fast_paths="off")
    slow.load_state_dict(fast.state_dict())
    query = torch.randn(2, S, 16)
    ref = torch.rand(2, S, 2, 2)
    torch.testing.assert_close(fast(query, ref, query, shapes), slow(query, ref, query, shapes),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="FAST_PATHS"):
        MSDeformAttn(16, 2, 2, 2, fast_paths="embedding_bag")


@pytest.mark.parametrize("device,setting,expected", [
    ("cpu", "auto", "embedding_bag"),
    ("cpu", "off", "grid_sample"),
    ("meta", "auto", "grid_sample"),  # a non-CPU device, available without an accelerator
])
def test_module_dispatches_by_the_setting_and_the_tensors_device(monkeypatch, device, setting,
                                                                  expected):
    from dataseg.modeling.ops import ms_deform_attn as module_file

    called = []
    for name in ("embedding_bag", "grid_sample"):
        def spy(value, shapes, loc, attn, name=name):
            called.append((name, value.device.type))
            B, Q = loc.shape[:2]
            return value.new_zeros(B, Q, value.shape[2] * value.shape[3])
        monkeypatch.setattr(module_file, f"ms_deform_attn_{name}", spy)
    module = MSDeformAttn(16, n_levels=2, n_heads=2, n_points=2, fast_paths=setting).to(device)
    shapes = [(4, 4), (2, 2)]
    query = torch.randn(2, 20, 16, device=device)
    out = module(query, torch.rand(2, 20, 2, 2, device=device), query, shapes)
    assert out.shape == (2, 20, 16)
    assert called == [(expected, device)]
