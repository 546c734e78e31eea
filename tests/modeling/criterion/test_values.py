"""MergeCriterion and MERGE against numbers computed by hand.

Every expected value below is written from the loss definitions (focal with alpha 0.25 and
gamma 2, dice with +1 smoothing, CE with background weight 0.1, squared-denominator
projection dice), not from the library's functions, so a dropped weight, a wrong
normalisation or swapped projection axes changes the result.
"""

import math

import pytest
import torch

from dataseg.modeling.criterion import (
    CriterionContext,
    anchored_groups,
    scatter_logsumexp,
)
from dataseg.modeling.criterion.losses import focal_loss, sigmoid_focal_dice_loss
from dataseg.modeling.criterion.merge_first_design import clamped_sum_logits
from helpers import make_criterion

ALPHA, GAMMA = 0.25, 2.0
LN2, LN3 = math.log(2.0), math.log(3.0)
H = W = 32  # padded image; masks predicted at 8 x 8 (stride 4)


def _focal_point(p, t):
    """Focal loss of one point with probability p and target t (the definition)."""
    if t:
        return ALPHA * (1 - p) ** GAMMA * -math.log(p)
    return (1 - ALPHA) * p ** GAMMA * -math.log(1 - p)


def _layer(logits, masks):
    return {"pred_logits": torch.as_tensor(logits, dtype=torch.float32)[None].requires_grad_(),
            "pred_masks": torch.as_tensor(masks, dtype=torch.float32)[None].requires_grad_()}


def _context(task, C, is_thing=None):
    return CriterionContext("ds", task, is_thing if is_thing is not None else
                            torch.zeros(C, dtype=torch.bool), None, [(H, W)], 0)


# ---------------------------------------------------------------- MERGE arithmetic -------


def test_logsumexp_merge_of_two_half_segment_members_has_zero_loss():
    # Segment = points 0..3; member A covers 0, 1 and member B covers 2, 3, with logit +-12.
    L = 12.0
    a = torch.tensor([L, L, -L, -L, -L, -L, -L, -L])
    b = torch.tensor([-L, -L, L, L, -L, -L, -L, -L])
    target = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.uint8)
    members = torch.stack([a, b]).requires_grad_()
    merged = scatter_logsumexp(members, torch.tensor([0, 0]), 1)
    # log(e^L + e^-L) = L + log(1 + e^-2L) inside, log(2 e^-L) = -L + ln 2 outside.
    torch.testing.assert_close(merged[0, :4], torch.full((4,), L + math.log1p(math.exp(-2 * L))))
    torch.testing.assert_close(merged[0, 4:], torch.full((4,), -L + LN2))
    focal, dice = sigmoid_focal_dice_loss(merged, target, ALPHA, GAMMA)
    assert focal.item() < 1e-7 and dice.item() < 1e-4
    (focal + dice).sum().backward()
    assert members.grad.abs().max().item() < 1e-3  # bounded, ~0: nothing left to learn


def test_merged_unit_weighs_like_one_proposal_where_clamped_sum_explodes():
    # Two members at logit 0 (p = 0.5) on one negative point.
    members = torch.zeros(2, 1, requires_grad=True)
    target = torch.zeros(1, 1, dtype=torch.uint8)
    merged = scatter_logsumexp(members, torch.tensor([0, 0]), 1)  # logit ln 2, p = 2/3
    focal, _ = sigmoid_focal_dice_loss(merged, target, ALPHA, GAMMA)
    assert focal.item() == pytest.approx(_focal_point(2 / 3, 0))  # 0.75 (2/3)^2 ln 3 = 0.366
    assert focal.item() == pytest.approx(0.75 * 4 / 9 * LN3)
    focal.sum().backward()
    # The unit's gradient is ONE proposal's (at the merged logit), split equally here.
    single = torch.tensor([[LN2]], requires_grad=True)
    sigmoid_focal_dice_loss(single, target, ALPHA, GAMMA)[0].sum().backward()
    torch.testing.assert_close(members.grad.sum(), single.grad.sum())
    torch.testing.assert_close(members.grad[0], members.grad[1])
    # The first design: min(1, 0.5 + 0.5) = 1 and log(1 - p) floored at 1e-6: 0.75 * 13.8.
    clamped = clamped_sum_logits(torch.zeros(2, 1), torch.tensor([0, 0]), 1)
    value = focal_loss(clamped, torch.zeros(1, 1), ALPHA, GAMMA).item()
    assert value == pytest.approx(0.75 * -math.log(1e-6), rel=1e-4)  # 10.36, 80x a proposal
    assert value > 25 * _focal_point(0.5, 0)


# ---------------------------------------------------------------- anchored grouping ------


def test_anchored_groups_by_hand():
    # One image, 5 proposals, 3 classes + background; ground truth: class 0 and class 2.
    # Anchors (the one-by-one match): q1 -> segment 0 (class 0), q3 -> segment 1 (class 2).
    # Argmax classes: q0: 0, q1: 1, q2: 2, q3: 0, q4: background.
    logits = torch.full((1, 5, 4), -5.0)
    for q, c in enumerate([0, 1, 2, 0, 3]):
        logits[0, q, c] = 5.0
    groups, unit_idx, gt_idx = anchored_groups(
        logits, torch.ones(3, dtype=torch.bool), [torch.tensor([1, 3])], [torch.tensor([0, 1])],
        [torch.tensor([0, 2])])
    # q0 joins the class-0 unit of anchor q1; q2 joins the class-2 unit of anchor q3; q3
    # predicts class 0 but is an anchor, so it stays with its own segment; q4 stays alone.
    assert groups.unit_of_query.tolist() == [0, 0, 1, 1, 2]
    assert unit_idx.tolist() == [0, 1] and gt_idx.tolist() == [0, 1]
    assert groups.unit_size.tolist() == [2, 2, 1]


def test_anchored_groups_panoptic_joins_stuff_only_and_needs_a_unique_segment():
    # Classes 0 (thing), 1 (stuff), 2 (stuff); segments: thing 0, stuff 1, stuff 2 twice.
    logits = torch.full((1, 6, 4), -5.0)
    for q, c in enumerate([0, 1, 2, 0, 1, 2]):
        logits[0, q, c] = 5.0
    mergeable = torch.tensor([False, True, True])
    groups, unit_idx, gt_idx = anchored_groups(
        logits, mergeable, [torch.tensor([0, 1, 2, 5])], [torch.tensor([0, 1, 2, 3])],
        [torch.tensor([0, 1, 2, 2])])
    # q3 (thing) never joins; q4 joins the single stuff-1 segment; class 2 has two segments,
    # so its extra proposal q5 is an anchor and nothing joins either of them.
    assert groups.unit_of_query.tolist() == [0, 1, 2, 4, 1, 3]
    assert groups.unit_size.tolist() == [1, 2, 1, 1, 1]


def _semantic_collapse_batch(Q=6, K=3, C=4):
    """Every proposal predicts class 0; the image has K side-by-side segments, classes 0..K-1."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(Q, C + 1, generator=g) * 0.1
    logits[:, 0] += 3.0
    masks = torch.randn(Q, H // 4, W // 4, generator=g)
    gt = torch.zeros(K, H, W, dtype=torch.bool)
    for k in range(K):
        gt[k, :, k * W // K:(k + 1) * W // K] = True
    layer = _layer(logits, masks)
    layer["aux_outputs"] = [_layer(logits.roll(1, 0), masks.roll(1, 0))]
    return layer, [{"labels": torch.arange(K), "masks": gt, "boxes": None}]


def test_no_segment_is_starved_and_merged_units_keep_their_class():
    outputs, targets = _semantic_collapse_batch()
    crit = make_criterion(num_points=64)
    for match in crit.match(outputs, targets, _context("semantic", 4)):
        assert sorted(match.gt_idx.tolist()) == [0, 1, 2]  # every segment supervised
        argmax = outputs["pred_logits"][0].argmax(-1)
        members = match.groups.unit_of_query
        for unit, label in zip(match.unit_idx.tolist(), match.gt_labels.tolist()):
            in_unit = (members == unit).nonzero().squeeze(1)
            # All but the anchor predict the unit's class: a merged unit of class c only
            # ever meets the segment of class c.
            assert int((argmax[in_unit] != label).sum()) <= 1
    # The first design fuses the six proposals into ONE unit: two segments get nothing.
    first = make_criterion(num_points=64, merge="first_design")
    assert all(m.gt_idx.numel() == 1 for m in first.match(outputs, targets,
                                                          _context("semantic", 4)))


def test_a_member_of_the_wrong_class_is_pushed_to_its_own_segment():
    # Segments: class 0 = left half, class 1 = right half. All three proposals predict class
    # 0, but q1's mask covers the right half: q1 becomes the anchor of the class-1 segment.
    logits = torch.tensor([[3.0, 0, 0, 0], [2.0, 0, 0, 0], [3.0, 0, 0, 0]])
    masks = torch.full((3, 8, 8), -6.0)
    masks[0, :, :4] = masks[2, :, :4] = 6.0
    masks[1, :, 4:] = 6.0
    gt = torch.zeros(2, H, W, dtype=torch.bool)
    gt[0, :, :16] = True
    gt[1, :, 16:] = True
    outputs = _layer(logits, masks)
    targets = [{"labels": torch.tensor([0, 1]), "masks": gt, "boxes": None}]
    crit = make_criterion(num_points=64, deep_supervision=False)
    losses = crit(outputs, targets, _context("semantic", 3))
    losses["loss_ce"].backward()
    grad = outputs["pred_logits"].grad[0, 1]
    assert grad[1] < 0 < grad[0]  # descent raises class 1 and lowers class 0 for q1


# ---------------------------------------------------------------- loss values ------------


def test_class_loss_no_object_weight_and_per_member_background():
    # One segment of class 0. q0 predicts it; q1 and q2 predict class 2, absent from the
    # image: each is pushed to background on its own (weight 0.1 each).
    logits = torch.tensor([[2.0, 0, 0, 0], [0, 0, 1.5, 0], [0, 0, 1.0, 0]])
    masks = torch.full((3, 8, 8), 4.0)
    gt = torch.ones(1, H, W, dtype=torch.bool)
    targets = [{"labels": torch.tensor([0]), "masks": gt, "boxes": None}]

    def nll(row, cls):
        return math.log(sum(math.exp(v) for v in row)) - row[cls]

    rows = logits.tolist()
    expected = (nll(rows[0], 0) + 0.1 * nll(rows[1], 3) + 0.1 * nll(rows[2], 3)) / 1.2
    crit = make_criterion(num_points=64, deep_supervision=False)
    losses = crit(_layer(logits, masks), targets, _context("semantic", 3))
    assert losses["loss_ce"].item() == pytest.approx(2.0 * expected, rel=1e-5)
    # The first design merges q1 and q2 into one unit with ONE background target (mean of
    # their softmaxes), i.e. half the background pressure per member.
    first = make_criterion(num_points=64, deep_supervision=False, merge="first_design")
    sm = [torch.softmax(logits[i], 0) for i in (1, 2)]
    merged_bg = -math.log(((sm[0] + sm[1]) / 2)[3].item())
    old = (nll(rows[0], 0) + 0.1 * merged_bg) / 1.1
    losses = first(_layer(logits, masks), targets, _context("semantic", 3))
    assert losses["loss_ce"].item() == pytest.approx(2.0 * old, rel=1e-5)


def test_mask_losses_by_hand_and_normalised_by_ground_truth_segments():
    # Instance data, one proposal at logit 0 (p = 0.5 everywhere) and TWO ground-truth masks
    # covering the whole image: one pair is matched, the loss is divided by 2 segments.
    P = 64
    logits = torch.zeros(1, 3)
    masks = torch.zeros(1, 8, 8)
    gt = torch.ones(2, H, W, dtype=torch.bool)
    targets = [{"labels": torch.tensor([0, 1]), "masks": gt, "boxes": None}]
    crit = make_criterion(num_points=P, deep_supervision=False)
    losses = crit(_layer(logits, masks), targets, _context("instance", 2))
    focal = _focal_point(0.5, 1)  # every point is positive: 0.25 * 0.25 * ln 2
    dice = 1 - (2 * 0.5 * P + 1) / (0.5 * P + P + 1)
    assert losses["loss_focal"].item() == pytest.approx(20.0 * focal / 2, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(5.0 * dice / 2, rel=1e-5)
    assert losses["loss_ce"].item() == pytest.approx(2.0 * LN3, rel=1e-5)  # 3 equal logits


def test_deep_supervision_losses_are_each_layers_own():
    gt = torch.ones(1, H, W, dtype=torch.bool)
    targets = [{"labels": torch.tensor([0]), "masks": gt, "boxes": None}]
    # Constant mask logits, so the values do not depend on where points fall (logit 0 is
    # also what the zero padding of the bilinear reads gives at the border).
    final = _layer(torch.zeros(2, 3), torch.full((2, 8, 8), 3.0))
    aux = _layer(torch.tensor([[1.0, 0, 0], [0, 0, 2.0]]), torch.zeros(2, 8, 8))
    losses = make_criterion(num_points=64)({**final, "aux_outputs": [aux]}, targets,
                                           _context("instance", 2))
    alone = make_criterion(num_points=64, deep_supervision=False)(aux, targets,
                                                                  _context("instance", 2))
    for key in ("loss_ce", "loss_focal", "loss_dice"):
        assert losses[key + "_0"].item() == pytest.approx(alone[key].item(), rel=1e-6)
    assert losses["loss_focal_0"].item() == pytest.approx(20.0 * _focal_point(0.5, 1), rel=1e-5)
    assert losses["loss_focal"].item() < losses["loss_focal_0"].item()  # the final layer's own


def test_box_projection_axes_by_hand():
    # Box x in [0, 16), y in [0, 8) of the 32 x 32 image = mask columns 0..3, rows 0..1.
    # The proposal fills columns 0..3 over ALL rows: its x-projection equals the box's, its
    # y-projection covers 8 rows instead of 2.
    masks = torch.full((1, 8, 8), -30.0)
    masks[0, :, :4] = 30.0
    targets = [{"labels": torch.tensor([0]), "masks": None,
                "boxes": torch.tensor([[0.0, 0.0, 16.0, 8.0]])}]
    crit = make_criterion(deep_supervision=False)
    losses = crit(_layer(torch.zeros(1, 2), masks), targets, _context("box", 1))
    dice_x = 1 - 2 * 4 / (4 + 4)
    dice_y = 1 - 2 * 2 / (8 + 2)  # = 0.6; swapped axes would give 1/3 + 1/3
    assert losses["loss_projection"].item() == pytest.approx(5.0 * (dice_x + dice_y), rel=1e-4)
