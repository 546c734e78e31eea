"""MERGE grouping and arithmetic (merge.py, and the ablation's merge_first_design.py)."""

import pytest
import torch
from torch.nn import functional as F

from dataseg.modeling.criterion import (
    merge_class_log_probs,
    merge_mask_logits,
    mergeable_classes,
)
from dataseg.modeling.criterion.merge_first_design import clamped_sum_logits, clamped_sum_probs

from reference import build_merge, merge_proposals

C = 4  # classes 0, 1 things; 2, 3 stuff
IS_THING = torch.tensor([True, True, False, False])


def _logits_for(classes, strength=6.0):
    """(1, Q, C+1) logits whose argmax is the given class (C = background)."""
    logits = torch.zeros(1, len(classes), C + 1)
    for q, c in enumerate(classes):
        logits[0, q, c] = strength
    return logits


def _masks(q, h=6, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, q, h, w, generator=g) * 2.0


def test_every_task_has_a_merge_rule_and_unknown_tasks_fail():
    rules = {"panoptic": [False, False, True, True], "semantic": [True] * 4,
             "instance": [False] * 4, "box": [False] * 4}
    for task, expected in rules.items():
        assert mergeable_classes(task, IS_THING, C).tolist() == expected
    with pytest.raises(ValueError, match="Unknown DaTaSeg task 'depth'"):
        build_merge("depth")


def test_first_design_merges_same_class_into_clamped_sum():
    # q0, q1: class 0 (a thing; semantic merges things too); q2: class 2; q3: background.
    logits = _logits_for([0, 0, 2, C])
    masks = _masks(4)
    merged = merge_proposals(logits, masks, "semantic", IS_THING, first_design=True)
    assert merged.groups.num_units == 3
    probs = torch.sigmoid(masks[0])
    expected = torch.clamp(probs[0] + probs[1], max=1.0)
    assert (probs[0] + probs[1] > 1).any() and (probs[0] + probs[1] < 1).any()
    torch.testing.assert_close(merged.mask_probs[0], expected)
    # Class distribution: mean of the members' softmaxes.
    sm = F.softmax(logits[0], -1)
    torch.testing.assert_close(merged.class_probs[0], (sm[0] + sm[1]) / 2)
    # The other class and the background-predicted proposal stay individual units.
    torch.testing.assert_close(merged.mask_probs[1], probs[2])
    torch.testing.assert_close(merged.mask_probs[2], probs[3])
    assert merged.groups.unit_size.tolist() == [2, 1, 1]


def test_background_proposals_are_never_merged():
    logits = _logits_for([C, C, C])
    groups = build_merge("semantic")(logits, None)
    assert groups.num_units == 3 and not groups.has_merges


def test_panoptic_merges_stuff_but_not_things():
    # q0, q1: thing class 1; q2, q3: stuff class 3.
    logits = _logits_for([1, 1, 3, 3])
    masks = _masks(4, seed=1)
    merged = merge_proposals(logits, masks, "panoptic", IS_THING)
    assert merged.groups.num_units == 3
    probs = torch.sigmoid(masks[0])
    units = merged.mask_probs
    # Stuff unit (sorted first: its key is the class id): the odds of the members add up.
    odds = probs[2] / (1 - probs[2]) + probs[3] / (1 - probs[3])
    torch.testing.assert_close(units[0], odds / (1 + odds))
    torch.testing.assert_close(units[1], probs[0])
    torch.testing.assert_close(units[2], probs[1])
    # is_thing None: all things, nothing merged.
    assert build_merge("panoptic")(logits, None).num_units == 4


def test_panoptic_checks_is_thing_length():
    with pytest.raises(ValueError, match="is_thing"):
        build_merge("panoptic")(_logits_for([0]), torch.tensor([True]))


@pytest.mark.parametrize("task", ["instance", "box"])
def test_instance_and_box_do_not_merge(task):
    logits = _logits_for([2, 2, 3, 3])
    groups = build_merge(task)(logits, IS_THING)
    assert groups.num_units == 4 and not groups.has_merges


def test_grouping_is_per_image():
    logits = torch.cat([_logits_for([2, 2, 0]), _logits_for([2, 3, 3])])
    groups = build_merge("semantic")(logits, IS_THING)
    assert groups.units_per_image == [2, 2]
    assert groups.unit_image.tolist() == [0, 0, 1, 1]
    # Units sort by image, then by class (merged) before singletons (keys C + q).
    assert groups.unit_of_query.tolist() == [1, 1, 0, 2, 3, 3]


def test_clamped_sum_of_probabilities():
    p = torch.tensor([[0.5, 0.9, 0.1], [0.7, 0.6, 0.0]])
    torch.testing.assert_close(clamped_sum_probs(p, torch.tensor([0, 0]), 1)[0],
                               torch.tensor([1.0, 1.0, 0.1]))


@pytest.mark.parametrize("first_design", [False, True])
def test_gradients_reach_every_member(first_design):
    logits = _logits_for([2, 2, 2]).requires_grad_()
    masks = _masks(3, seed=2).requires_grad_()
    merged = merge_proposals(logits, masks, "semantic", IS_THING, first_design=first_design)
    assert merged.groups.num_units == 1
    # Pull the merged mask down everywhere, including where the clamped sum saturates.
    (merged.mask_probs.sum() + merged.class_probs[:, 2].sum()).backward()
    for q in range(3):
        assert masks.grad[0, q].abs().sum() > 0, f"member {q} got no mask gradient"
        assert logits.grad[0, q].abs().sum() > 0


def test_clamped_sum_passes_gradient_where_saturated():
    x = torch.full((2, 1), 3.0, requires_grad=True)  # sigmoid 0.95 each: sum 1.9 > 1
    merged = clamped_sum_probs(torch.sigmoid(x), torch.tensor([0, 0]), 1)
    assert merged.item() == 1.0
    merged.sum().backward()
    assert (x.grad > 0).all()


def _logsumexp_probs(p, gid, num):
    """The log-sum-exp merge written on probabilities: the members' odds add up."""
    odds = p.new_zeros(num, p.shape[1]).index_add(0, gid, p / (1 - p))
    return odds / (1 + odds)


@pytest.mark.parametrize("first_design", [False, True])
def test_logit_merge_matches_probability_merge(first_design):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, generator=g) * 3
    gid = torch.tensor([0, 1, 1, 2, 1])
    if first_design:
        merge, ref = clamped_sum_logits, clamped_sum_probs(torch.sigmoid(x), gid, 3)
    else:
        merge, ref = merge_mask_logits, _logsumexp_probs(torch.sigmoid(x.double()), gid, 3).float()
    pp = merge(x, gid, 3)
    torch.testing.assert_close(pp.prob, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pp.log_prob.exp(), ref.clamp(min=1e-6), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pp.log_one_minus_prob.exp(), (1 - ref).clamp(min=1e-6),
                               atol=1e-5, rtol=1e-4)
    # Single-member units keep exact logsigmoid (no flooring even when saturated).
    y = torch.tensor([[40.0, -40.0]])
    single = merge(y, torch.tensor([0]), 1)
    torch.testing.assert_close(single.log_one_minus_prob, F.logsigmoid(-y))
    torch.testing.assert_close(single.log_prob, F.logsigmoid(y))


def test_class_log_probs_equal_log_of_mean_softmax():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, C + 1, generator=g) * 10
    gid = torch.tensor([1, 0, 1, 2, 1])
    out = merge_class_log_probs(logits, gid, 3)
    sm = F.softmax(logits, -1)
    ref = torch.stack([sm[1], (sm[0] + sm[2] + sm[4]) / 3, sm[3]])
    torch.testing.assert_close(out.exp(), ref)
    torch.testing.assert_close(out[2], F.log_softmax(logits[3], -1))
