"""Task-specific MERGE of mask proposals before matching (DaTaSeg's third idea).

A merge has two halves that this module keeps apart:

* **grouping** (discrete): which proposals form one segment. The task table
  (``dataseg.tasks``) says which classes may be merged (semantic: every class, panoptic: stuff
  classes only, instance / box: none). In training every unit is anchored on a ground-truth
  segment (:func:`anchored_groups`): the segment's one-by-one Hungarian match plus every other
  proposal predicting its (mergeable) class.
* **arithmetic** (continuous): how the members' mask logits and class distributions are
  combined into the segment's.

Rules shared by every task (the paper does not publish them; these are our choices):

* A proposal whose argmax is the background (last) column is never merged: it stays an
  individual unit, which the matcher may leave unmatched so cross-entropy pushes it to
  background.
* A proposal whose class is not mergeable for the task (a thing in panoptic, anything in
  instance / box) stays an individual unit too. Every proposal belongs to exactly one unit,
  so a unit of one member is the proposal itself.
* The merged class distribution is the mean of the members' softmax distributions.
* The merged mask LOGIT is ``log sum_i exp(x_i)`` of the members' logits, i.e. the merged
  odds are the sum of the members' odds. It is a union (at least the largest member, about
  the sum of small probabilities), its logs are exact (the unit takes the same logits losses
  as a single proposal, no floor anywhere), and its gradient is a single proposal's gradient
  split among the members by their softmax weights, so a unit of n members never weighs more
  than one proposal. Members that each cover half of a segment give the segment, with ~zero
  loss.

The first design (argmax grouping matched freely, clamped-sum arithmetic) lives in
``merge_first_design.py``, for the MERGE ablation only.

Everything is vectorised over the whole batch: units get global ids (sorted by image, then
by key) through one ``torch.unique``, and members are combined with ``index_add`` /
``scatter_reduce``; there is no Python loop over queries or segments (the anchored grouping
loops over the images of the batch only).
"""

from dataclasses import dataclass
from typing import List, NamedTuple, Optional

import torch
from torch.nn import functional as F

from ...tasks import get_task
from ..fast_paths.point_losses import fused_sigmoid_with_logs

__all__ = [
    "MergeGroups",
    "PointProbs",
    "anchored_groups",
    "groups_from_units",
    "mergeable_classes",
    "singleton_groups",
    "merge_class_log_probs",
    "merge_mask_logits",
    "scatter_logsumexp",
    "sigmoid_with_logs",
]

@dataclass
class MergeGroups:
    """Assignment of every proposal of a batch to a unit (a merged segment or itself).

    Attributes:
        unit_of_query: int64 (B*Q,) global unit id of each flattened proposal.
        num_units: total number of units U in the batch.
        unit_image: int64 (U,) image index of each unit (units are sorted by image).
        unit_size: int64 (U,) number of members.
        unit_rep: int64 (U,) one member (the lowest flattened query index) per unit.
        units_per_image: list of B ints, the number of units of each image.
        num_queries: Q.
    """

    unit_of_query: torch.Tensor
    num_units: int
    unit_image: torch.Tensor
    unit_size: torch.Tensor
    unit_rep: torch.Tensor
    units_per_image: List[int]
    num_queries: int

    @property
    def has_merges(self) -> bool:
        return self.num_units < self.unit_of_query.numel()

    def image_offsets(self) -> List[int]:
        """Start of each image's units in the global unit order (length B + 1)."""
        offsets = [0]
        for n in self.units_per_image:
            offsets.append(offsets[-1] + n)
        return offsets


def groups_from_units(unit_of_query: torch.Tensor, unit_image: torch.Tensor, B: int, Q: int
            ) -> MergeGroups:
    """MergeGroups from each proposal's global unit id and each unit's image.

    Args:
        unit_of_query: int64 (B*Q,) global unit id of each flattened proposal.
        unit_image: int64 (U,) image of each unit, sorted (units are numbered image by image).
    """
    U = unit_image.numel()
    device = unit_of_query.device
    rep = torch.full((U,), B * Q, dtype=torch.long, device=device).scatter_reduce(
        0, unit_of_query, torch.arange(B * Q, device=device), reduce="amin")
    return MergeGroups(unit_of_query, U, unit_image, torch.bincount(unit_of_query, minlength=U),
                       rep, torch.bincount(unit_image, minlength=B).tolist(), Q)


def singleton_groups(B: int, Q: int, device=None) -> MergeGroups:
    """Every proposal its own unit (no MERGE); units in flattened query order."""
    ids = torch.arange(B * Q, device=device)
    return MergeGroups(
        unit_of_query=ids,
        num_units=B * Q,
        unit_image=torch.div(ids, Q, rounding_mode="floor"),
        unit_size=torch.ones(B * Q, dtype=torch.long, device=device),
        unit_rep=ids,
        units_per_image=[Q] * B,
        num_queries=Q,
    )


def mergeable_classes(task: str, is_thing: Optional[torch.Tensor], num_classes: int,
                      device=None) -> torch.Tensor:
    """bool (C,) classes whose proposals the task's MERGE rule merges.

    The rule is the task table's ``merge`` entry (``dataseg.tasks``): "all" (semantic),
    "stuff" (panoptic; ``is_thing`` None means every class is a thing, so nothing merges) or
    "none" (instance, box).
    """
    rule = get_task(task).merge
    if rule == "all":
        return torch.ones(num_classes, dtype=torch.bool, device=device)
    if rule == "stuff" and is_thing is not None:
        if is_thing.numel() != num_classes:
            raise ValueError(
                f"is_thing has {is_thing.numel()} entries but the logits cover {num_classes} "
                "classes (+1 background); pass the dataset's dataseg_isthing for the same "
                "vocabulary."
            )
        return ~is_thing.to(device=device, dtype=torch.bool)
    return torch.zeros(num_classes, dtype=torch.bool, device=device)


# ------------------------------------------------------------------------------------------
# Arithmetic
# ------------------------------------------------------------------------------------------


def sigmoid_with_logs(x: torch.Tensor, fast: bool = False):
    """(sigmoid(x), log sigmoid(x), log(1 - sigmoid(x))), numerically stable.

    Built from vectorised exp/log because ``F.logsigmoid`` (and ``log1p``) have slow scalar
    CPU kernels (several times slower than this on 2.5M points), and
    ``log(1 - sigmoid(x)) = log sigmoid(x) - x`` gives the second log for one subtraction.
    ``log(1 + e)`` stands for ``log1p(e)``: the absolute error (< 1.2e-7, where e < eps) is
    far below what the losses resolve.

    Args:
        x: logits of any shape.
        fast: with gradients, run ``fast_paths.point_losses.fused_sigmoid_with_logs``, which
            keeps only ``sigmoid(x)`` for backward.
    """
    if fast and torch.is_grad_enabled() and x.requires_grad:
        return fused_sigmoid_with_logs(x)
    log_p = x.clamp(max=0.0) - torch.log(1.0 + torch.exp(-x.abs()))
    return torch.sigmoid(x), log_p, log_p - x


def _scatter_sum(values: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    out = values.new_zeros((num,) + values.shape[1:])
    return out.index_add(0, index, values)


def _scatter_max(values: torch.Tensor, index: torch.Tensor, num: int) -> torch.Tensor:
    out = values.new_full((num,) + values.shape[1:], float("-inf"))
    idx = index.view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    return out.scatter_reduce(0, idx, values, reduce="amax", include_self=True)


def scatter_logsumexp(
    values: torch.Tensor, index: torch.Tensor, num: int
) -> torch.Tensor:
    """``out[u] = log sum_{i: index[i] = u} exp(values[i])`` over dim 0, stable and exact.

    A row that is alone in its group is returned unchanged (value and gradient 1). The shift
    by the (detached) group maximum does not change the gradient, which is the softmax of the
    group's values. Rows of ``out`` without members are -inf.
    """
    peak = _scatter_max(values.detach(), index, num)
    safe_peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    summed = _scatter_sum((values - safe_peak[index]).exp(), index, num)
    return summed.log() + safe_peak


def merge_class_log_probs(
    pred_logits: torch.Tensor, unit_of_member: torch.Tensor, num_units: int
) -> torch.Tensor:
    """Log of the mean of the members' softmax distributions.

    Computed as a scatter log-sum-exp of the members' log-softmax, so it is exact (and
    equal to ``log_softmax`` for single-member units) without flooring small probabilities.

    Args:
        pred_logits: (N, C+1) member logits.
        unit_of_member: int64 (N,) unit of each member.
        num_units: U.

    Returns:
        (U, C+1) log-probabilities.
    """
    log_p = F.log_softmax(pred_logits.float(), dim=-1)
    count = torch.bincount(unit_of_member, minlength=num_units).to(log_p.dtype)
    return scatter_logsumexp(log_p, unit_of_member, num_units) - count.log()[:, None]


class PointProbs(NamedTuple):
    """Merged mask probabilities with numerically safe logs, all (U, ...)."""

    prob: torch.Tensor
    log_prob: torch.Tensor
    log_one_minus_prob: torch.Tensor


def merge_mask_logits(
    member_logits: torch.Tensor, unit_of_member: torch.Tensor, num_units: int
) -> PointProbs:
    """Merge member mask LOGITS (N, ...) into unit probabilities and their logs (U, ...).

    The unit's logit is the log-sum-exp of its members' (see the module docstring), so a
    single-member unit keeps its logit, and both logs are exact ``logsigmoid`` values.

    Args:
        member_logits: (N, ...) mask logits of the members.
        unit_of_member: int64 (N,) unit of each member (in ``0..num_units-1``).
        num_units: U.
    """
    x = member_logits.float()
    return PointProbs(*sigmoid_with_logs(scatter_logsumexp(x, unit_of_member, num_units)))


# ------------------------------------------------------------------------------------------
# Ground-truth-anchored MERGE (the default matching of merged units)
# ------------------------------------------------------------------------------------------


def anchored_groups(
    pred_logits: torch.Tensor,
    mergeable: torch.Tensor,
    anchors: List[torch.Tensor],
    anchor_gt: List[torch.Tensor],
    gt_labels: List[torch.Tensor],
) -> "tuple[MergeGroups, torch.Tensor, torch.Tensor]":
    """Units of a ground-truth-anchored MERGE and their one-to-one pairs with ground truth.

    Every ground-truth segment first gets an ANCHOR proposal (a one-to-one Hungarian match
    of the proposals one by one, as without MERGE), so no segment is left unsupervised while
    proposals exist. Then every other proposal whose argmax class ``c`` is mergeable joins
    the unit of the segment of class ``c`` when the image has exactly one such segment
    (always in semantic data and for panoptic stuff): a merged unit of class ``c`` is only
    ever paired with the segment of class ``c``. Everything else (background-predicted
    proposals, things, classes absent from the image or with several segments) stays a
    unit of its own and, being unmatched, is pushed to background one by one.

    A member's class decides its group at every iteration, so groups split as soon as a
    member predicts another class (an anchor is pulled towards its segment's class).

    Args:
        pred_logits: (B, Q, C+1) class logits, background last (only the argmax is used).
        mergeable: bool (C,) classes the task merges.
        anchors: per image, int64 (M_b,) query index of each anchor.
        anchor_gt: per image, int64 (M_b,) ground-truth index of each anchor.
        gt_labels: per image, int64 (K_b,) ground-truth classes.

    Returns:
        ``(groups, unit_idx, gt_idx)``: the MergeGroups (units sorted by image; the M_b
        matched units of an image come first, in anchor order) and the M pairs (global unit
        id, ground-truth index within its image), ordered by image.
    """
    B, Q, C1 = pred_logits.shape
    C = C1 - 1
    device = pred_logits.device
    labels = pred_logits.detach().argmax(-1)
    mergeable = mergeable.to(device)
    unit_of_query, unit_idx, gt_idx, units_per_image = [], [], [], []
    offset = 0
    for b in range(B):
        unit = torch.full((Q,), -1, dtype=torch.long, device=device)
        m = anchors[b].numel()
        unit[anchors[b]] = torch.arange(m, device=device)
        classes = gt_labels[b].to(device)
        if m and bool(mergeable.any()):
            anchor_class = classes[anchor_gt[b]]
            once = torch.bincount(classes, minlength=C)[anchor_class] == 1
            eligible = once & mergeable[anchor_class]
            unit_of_class = torch.full((C + 1,), -1, dtype=torch.long, device=device)
            unit_of_class[anchor_class[eligible]] = eligible.nonzero().squeeze(1)
            joins = (unit < 0) & (unit_of_class[labels[b]] >= 0)
            unit[joins] = unit_of_class[labels[b][joins]]
        rest = unit < 0
        unit[rest] = m + torch.arange(int(rest.sum()), device=device)
        n = m + int(rest.sum())
        unit_of_query.append(unit + offset)
        unit_idx.append(torch.arange(m, device=device) + offset)
        gt_idx.append(anchor_gt[b].to(device))
        units_per_image.append(n)
        offset += n
    unit_image = torch.repeat_interleave(
        torch.arange(B, device=device), torch.tensor(units_per_image, device=device))
    return groups_from_units(torch.cat(unit_of_query), unit_image, B, Q), torch.cat(unit_idx), \
        torch.cat(gt_idx)
