"""The criterion's fused autograd paths (CPU fast paths) equal the plain formulas of
``criterion.losses`` and ``criterion.merge`` (values + grads); the plain formulas equal
hand-computed values in ``tests/modeling/criterion/test_values.py``."""

import functools

import pytest
import torch

from dataseg.modeling.criterion import merge_mask_logits
from dataseg.modeling.criterion.merge_first_design import clamped_sum_logits
from dataseg.modeling.criterion.point_sampling import sample_shared_points
from dataseg.modeling.criterion.losses import (
    dice_loss,
    focal_loss,
    sigmoid_focal_dice_loss,
)
from dataseg.modeling.criterion.merge import PointProbs, sigmoid_with_logs



def _grads(fn, *inputs):
    inputs = [x.detach().clone().double().requires_grad_(True) for x in inputs]
    out = fn(*inputs)
    weights = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    return out.detach(), [x.grad for x in inputs]


def _assert_fused_focal_equals_plain(run):
    """``run(loss_fn)`` -> (values, [grads]): the fused focal loss gives the plain one's."""
    fused, (gf,) = run(functools.partial(focal_loss, fast=True))
    ref, (gr,) = run(focal_loss)
    torch.testing.assert_close(fused, ref)
    torch.testing.assert_close(gf, gr)


def test_sigmoid_with_logs_fused_matches_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 300, generator=g) * 6
    x[0, :4] = torch.tensor([0.0, 30.0, -30.0, 1e-3])

    def combine(s, lp, l1mp):  # every output reaches the loss with its own weight
        return s * 0.3 + lp * 1.7 - l1mp * 0.9

    fused, (gf,) = _grads(lambda t: combine(*sigmoid_with_logs(t, fast=True)), x)
    ref, (gr,) = _grads(lambda t: combine(*sigmoid_with_logs(t)), x)
    torch.testing.assert_close(fused, ref)
    # x == 0 exactly: abs() has a zero subgradient there in the formula; skip that point.
    mask = x.double() != 0
    torch.testing.assert_close(gf[mask], gr[mask])
    with torch.no_grad():  # no grad: plain values, no autograd function
        for a, b in zip(sigmoid_with_logs(x, fast=True), sigmoid_with_logs(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 1.0), (0.25, 0.0),
                                         (0.25, 1.5)])
@pytest.mark.parametrize("soft_targets", [False, True])
def test_focal_loss_fused_matches_the_plain_formula(alpha, gamma, soft_targets):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 257, generator=g) * 4
    t = torch.rand(6, 257, generator=g)
    t = t if soft_targets else (t > 0.5).double()
    t = t.double()

    def run(loss_fn):
        def fn(p_logits):
            s, lp, l1mp = sigmoid_with_logs(p_logits)
            return loss_fn(PointProbs(s, lp, l1mp), t, alpha, gamma)
        return _grads(fn, x)

    _assert_fused_focal_equals_plain(run)


def test_merged_point_losses_match_the_plain_formula():
    """Merged units (probabilities and floored logs as separate inputs) get equal grads."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 200, generator=g) * 3
    unit = torch.tensor([0, 1, 1, 2, 3, 3, 3, 4, 5])
    t = (torch.rand(6, 200, generator=g) > 0.4).double()

    def run(loss_fn):
        def fn(logits):
            pp = clamped_sum_logits(logits, unit, 6)
            return loss_fn(pp, t, 0.25, 2.0) + dice_loss(pp.prob, t)
        return _grads(fn, x)

    _assert_fused_focal_equals_plain(run)


def test_focal_loss_float32_close_to_float64():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 1000, generator=g) * 5
    t = (torch.rand(4, 1000, generator=g) > 0.5).float()
    x32 = x.clone().requires_grad_(True)
    pp = PointProbs(*sigmoid_with_logs(x32, fast=True))
    focal_loss(pp, t, fast=True).sum().backward()
    x64 = x.double().requires_grad_(True)
    pp = PointProbs(*sigmoid_with_logs(x64))
    focal_loss(pp, t.double()).sum().backward()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 1.0), (0.25, 0.0),
                                         (0.25, 1.5)])
@pytest.mark.parametrize("targets", ["bool", "uint8", "soft"])
def test_logit_focal_dice_matches_probability_path(alpha, gamma, targets):
    """Single-proposal units: the logits path equals focal/dice of sigmoid_with_logs."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 257, generator=g) * 4
    x[0, :3] = torch.tensor([0.0, 40.0, -40.0])  # saturated logits keep finite gradients
    t = torch.rand(6, 257, generator=g, dtype=torch.float64)
    if targets != "soft":
        t = t > 0.5
        t = t if targets == "bool" else t.to(torch.uint8)
    t_float = t.double()
    weights = torch.tensor([0.7, 1.3], dtype=torch.float64)

    def fused(logits):
        focal, dice = sigmoid_focal_dice_loss(logits, t, alpha, gamma, fast=True)
        return torch.stack([focal, dice], -1) * weights

    def reference(logits):
        pp = PointProbs(*sigmoid_with_logs(logits))
        focal = focal_loss(pp, t_float, alpha, gamma)
        return torch.stack([focal, dice_loss(pp.prob, t_float)], -1) * weights

    out, (gf,) = _grads(fused, x)
    ref, (gr,) = _grads(reference, x)
    torch.testing.assert_close(out, ref)
    mask = x.double() != 0  # abs() has a zero subgradient at 0 in the reference formula
    torch.testing.assert_close(gf[mask], gr[mask])
    assert torch.isfinite(gf).all()


def test_mixed_single_and_merged_units_equal_one_merge_path():
    """The criterion's split (logits path for singletons, merge path for merged units) sums
    to the same losses and gradients as merging every unit through ``clamped_sum_logits`` (the
    first design's probability path)."""
    from dataseg.modeling.criterion import MaskSupervision

    crit = MaskSupervision(first_merge_design=True)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(7, 120, generator=g) * 3
    member_pair = torch.tensor([2, 0, 1, 1, 3, 2, 2])  # pairs 0 and 3 are single proposals
    single_pair = torch.tensor([True, False, False, True])
    t = torch.rand(4, 120, generator=g) > 0.5

    def split(logits):
        focal, dice = crit._merged_point_losses(logits, member_pair, single_pair, t, True)
        return torch.stack([focal, 2.0 * dice])

    def one_path(logits):
        pp = clamped_sum_logits(logits, member_pair, 4)
        td = t.to(pp.prob.dtype)
        return torch.stack([focal_loss(pp, td).sum(), 2.0 * dice_loss(pp.prob, td).sum()])

    out, (gs,) = _grads(split, x)
    ref, (go,) = _grads(one_path, x)  # clamped_sum_logits computes in float32
    torch.testing.assert_close(out, ref.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gs, go.double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 1.0), (0.25, 0.0),
                                         (0.25, 1.5)])
@pytest.mark.parametrize("weights", [(20.0, 5.0), (1.0, 0.0), (0.0, 3.0)])
def test_logit_matching_cost_equals_the_probability_costs(alpha, gamma, weights):
    """focal_dice_cost_logits (the cost of single proposals) = the weighted focal_cost +
    dice_cost of sigmoid_with_logs(logits), saturated logits included."""
    from dataseg.modeling.criterion.matcher import dice_cost, focal_cost, focal_dice_cost_logits

    g = torch.Generator().manual_seed(8)
    x = torch.randn(7, 301, generator=g, dtype=torch.float64) * 4
    x[0, :3] = torch.tensor([0.0, 40.0, -40.0])
    t = (torch.rand(5, 301, generator=g) > 0.5).double()
    t[1] = torch.rand(301, generator=g, dtype=torch.float64)  # soft targets too
    pp = PointProbs(*sigmoid_with_logs(x))
    w_focal, w_dice = weights
    want = w_focal * focal_cost(pp, t, alpha, gamma) + w_dice * dice_cost(pp.prob, t)
    got = focal_dice_cost_logits(x, t, alpha, gamma, w_focal, w_dice)
    torch.testing.assert_close(got, want)


def test_matching_from_logits_equals_the_merged_probability_path():
    """The criterion's cost of unmerged units (logits) = its cost through merge_mask_logits,
    for the default and a permuted unit order, in float32; same Hungarian assignment."""
    from dataseg.modeling.criterion import HungarianMatcher, MaskSupervision
    from dataseg.modeling.criterion.mask_supervision import _MaskTargets
    from dataseg.modeling.criterion.merge import PointProbs as Probs
    from dataseg.modeling.criterion.merge import groups_from_units, singleton_groups

    sup, matcher = MaskSupervision(num_points=500), HungarianMatcher()
    g = torch.Generator().manual_seed(9)
    B, Q, K = 2, 6, 4
    layer = {"pred_masks": torch.randn(B, Q, 8, 8, generator=g) * 3}
    coords = torch.rand(500, 2, generator=g)
    prep = _MaskTargets(coords, [(torch.rand(K, 500, generator=g) > 0.5).float()] * B)
    class_logp = torch.log_softmax(torch.randn(B * Q, 5, generator=g), -1)
    labels = torch.tensor([0, 3, 1, 2])
    perm = torch.cat([torch.randperm(Q, generator=g) + b * Q for b in range(B)])
    image_of_unit = torch.arange(B).repeat_interleave(Q)
    for groups in (singleton_groups(B, Q), groups_from_units(perm, image_of_unit, B, Q)):
        fast = sup.cost_inputs(layer, None, groups, prep)
        assert all(inputs.unit_logits is not None for inputs in fast)
        point_logits = sample_shared_points(layer["pred_masks"], coords).flatten(0, 1)
        slow = merge_mask_logits(point_logits, groups.unit_of_query, groups.num_units)
        for b, (s, e) in enumerate(((0, Q), (Q, 2 * Q))):
            through_probs = fast[b]._replace(unit_logits=None,
                                             unit_probs=Probs(*(v[s:e] for v in slow)))
            got = sup.image_cost(matcher, fast[b], class_logp[s:e], labels)
            want = sup.image_cost(matcher, through_probs, class_logp[s:e], labels)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            assert [r.tolist() for r in matcher.assign(got)] == [
                r.tolist() for r in matcher.assign(want)]


def test_pixel_grid_is_the_pixel_centre_formula():
    """PixelPoints.grid: x = (2 col + 1) / W - 1, y = (2 row + 1) / H - 1, (M, P, 1, 2),
    and the bilinear reads at those points equal point_sample at the same centres."""
    from detectron2.projects.point_rend.point_features import point_sample

    from dataseg.modeling.fast_paths.grid_point_sampler import PixelPoints, sample_logits_at_pixels

    g = torch.Generator().manual_seed(10)
    H, W = 12, 20
    row = torch.randint(0, H, (3, 7), generator=g).to(torch.int16)
    col = torch.randint(0, W, (3, 7), generator=g).to(torch.int16)
    row[0, 0], col[0, 0], row[0, 1], col[0, 1] = 0, 0, H - 1, W - 1
    grid = PixelPoints(row, col, (H, W)).grid(torch.float64)
    assert grid.shape == (3, 7, 1, 2) and grid.dtype == torch.float64
    torch.testing.assert_close(grid[..., 0, 0], (2.0 * col.double() + 1.0) / W - 1.0)
    torch.testing.assert_close(grid[..., 0, 1], (2.0 * row.double() + 1.0) / H - 1.0)
    assert grid[0, 0, 0].tolist() == pytest.approx([1.0 / W - 1.0, 1.0 / H - 1.0])
    maps = torch.randn(3, 3, 5, generator=g, dtype=torch.float64)
    coords = torch.stack([(col.double() + 0.5) / W, (row.double() + 0.5) / H], -1)
    torch.testing.assert_close(
        sample_logits_at_pixels(maps, PixelPoints(row, col, (H, W))),
        point_sample(maps[:, None], coords, align_corners=False)[:, 0])
