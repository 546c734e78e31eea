"""The first MERGE design, kept only for the MERGE ablation (``CRITERION.MERGE "first_design"``).

DaTaSeg's MERGE (``merge.py``) anchors every merged unit on a ground-truth segment and merges
the members' mask LOGITS by log-sum-exp. The first design, which the small-scale claims
experiment compares against, differed in both halves:

* **grouping**: proposals are grouped by their argmax class alone (:func:`group_by_class`) and
  the units are then matched to the ground truth freely, like single proposals. From scratch
  most proposals predict the same few classes, so the units collapse (docs/merge.md).
* **arithmetic**: a unit's mask probability is ``min(1, sum_i p_i)`` with a straight-through
  gradient (:func:`clamped_sum_probs`), and its logs are floored at ``1e-6``
  (:func:`clamped_sum_logits`). Two overlapping members at 0.5 already give probability 1, so
  every negative point costs the floor (13.8) and every member gets the full gradient: losses
  1-2 orders of magnitude above a proposal's.

Nothing outside the ablation uses this module.
"""

from typing import Optional

import torch

from .merge import MergeGroups, PointProbs, groups_from_units, sigmoid_with_logs

__all__ = ["group_by_class", "clamped_sum_probs", "clamped_sum_logits"]

# Floor of probabilities inside the logs of merged units. With focal loss the (p)^gamma /
# (1 - p)^gamma factors keep a non-zero gradient where the log is floored.
_LOG_EPS = 1e-6


def group_by_class(pred_logits: torch.Tensor, mergeable: torch.Tensor) -> MergeGroups:
    """Group proposals that predict the same mergeable class, per image.

    Args:
        pred_logits: (B, Q, C+1) class logits, background last. Only the argmax is used.
        mergeable: bool (C,) classes whose proposals are merged.

    Returns:
        MergeGroups. Background-predicted and non-mergeable proposals are singleton units.
    """
    B, Q, C1 = pred_logits.shape
    C = C1 - 1
    labels = pred_logits.detach().argmax(-1)  # (B, Q); grouping is discrete, no gradient
    is_fg = labels < C
    merge_q = is_fg & mergeable.to(labels.device)[labels.clamp(max=C - 1)]
    query_ids = torch.arange(Q, device=labels.device).expand(B, Q)
    # Merged proposals share the key of their class; the others get a key of their own.
    key = torch.where(merge_q, labels, C + query_ids)
    stride = C + Q
    image_ids = torch.arange(B, device=labels.device)[:, None]
    global_key = (image_ids * stride + key).reshape(-1)
    uniq, inverse = torch.unique(global_key, return_inverse=True)
    return groups_from_units(inverse, torch.div(uniq, stride, rounding_mode="floor"), B, Q)


def clamped_sum_probs(member_probs: torch.Tensor, unit_of_member: torch.Tensor, num_units: int
                      ) -> torch.Tensor:
    """``min(1, sum_i p_i)`` of the members (N, ...) of each unit: (U, ...).

    The value is exactly clamped; the gradient is the sum's everywhere (straight-through), so
    saturated members still learn.
    """
    s = member_probs.new_zeros((num_units,) + member_probs.shape[1:]).index_add(
        0, unit_of_member, member_probs)
    return s.detach().clamp(max=1.0) + (s - s.detach())


def clamped_sum_logits(
    member_logits: torch.Tensor,
    unit_of_member: torch.Tensor,
    num_units: int,
    single_member: Optional[torch.Tensor] = None,
    unit_rep_member: Optional[torch.Tensor] = None,
    fast: bool = False,
) -> PointProbs:
    """:func:`clamped_sum_probs` of member LOGITS (N, ...) with the logs the losses take (U, ...).

    Single-member units keep the exact ``logsigmoid`` of their logits (a saturated but wrong
    proposal still gets a gradient, as with a logits loss); merged units take logs floored at
    ``1e-6``.

    Args:
        member_logits: (N, ...) mask logits of the members.
        unit_of_member: int64 (N,) unit of each member (in ``0..num_units-1``).
        num_units: U.
        single_member: optional bool (U,) units with exactly one member; computed if None.
        unit_rep_member: optional int64 (U,) index into the N members of one member per
            unit; computed if None.
        fast: the fused ``sigmoid_with_logs`` (``MODEL.DATASEG.FAST_PATHS`` on CPU).
    """
    x = member_logits.float()
    if single_member is None:
        single_member = torch.bincount(unit_of_member, minlength=num_units) == 1
    if bool(single_member.all()):
        # Nothing merged: the units are the members (in unit order).
        order = torch.empty_like(unit_of_member)
        order[unit_of_member] = torch.arange(unit_of_member.numel(), device=x.device)
        return PointProbs(*sigmoid_with_logs(x[order], fast))
    if unit_rep_member is None:
        ids = torch.arange(unit_of_member.numel(), device=x.device)
        unit_rep_member = torch.full((num_units,), unit_of_member.numel(), device=x.device)
        unit_rep_member = unit_rep_member.scatter_reduce(0, unit_of_member, ids, reduce="amin")
    # Single-member rows get their exact logs; only merged rows use the floored logs.
    single_rows = single_member.nonzero().squeeze(1)
    merged_rows = (~single_member).nonzero().squeeze(1)
    _, rep_log_p, rep_log_1mp = sigmoid_with_logs(x[unit_rep_member[single_rows]], fast)

    def assemble(single_part, merged_part):
        out = single_part.new_empty((num_units,) + single_part.shape[1:])
        return out.index_copy(0, single_rows, single_part).index_copy(0, merged_rows, merged_part)

    prob = clamped_sum_probs(torch.sigmoid(x), unit_of_member, num_units)
    merged = prob[merged_rows]
    log_p = assemble(rep_log_p, merged.clamp(min=_LOG_EPS).log())
    log_1mp = assemble(rep_log_1mp, (1.0 - merged).clamp(min=_LOG_EPS).log())
    return PointProbs(prob, log_p, log_1mp)
