"""Per-pair mask and class losses in probability space (so merged units can use them).

Merged units only exist as probabilities, so every loss here takes probabilities and their
logs (``PointProbs``) rather than logits. For single-proposal units the logs are the exact
``logsigmoid`` / ``log_softmax`` of the logits (see ``merge.py``), so the values and gradients
equal the usual logits losses (fvcore's ``sigmoid_focal_loss``, ``F.cross_entropy``).
"""

from typing import Optional

import torch
from torch.nn import functional as F

from .merge import PointProbs

__all__ = [
    "focal_loss",
    "sigmoid_focal_dice_loss",
    "compiled_sigmoid_focal_dice_loss",
    "dice_loss",
    "class_nll_loss",
]


def _focal_terms(p, log_p, log_1mp, targets, alpha, gamma):
    """Per-point factors shared by the fused forward and backward (all (M, P))."""
    one_minus_pt = p * (1.0 - 2.0 * targets) + targets  # 1 - p_t, p_t = p t + (1-p)(1-t)
    base = one_minus_pt.clamp(min=0.0)
    if alpha >= 0:
        alpha_t = (2.0 * alpha - 1.0) * targets + (1.0 - alpha)
    else:
        alpha_t = None
    ce = -(targets * log_p + (1.0 - targets) * log_1mp)
    return one_minus_pt, base, alpha_t, ce


class _FocalLoss(torch.autograd.Function):
    """Focal loss that keeps only its inputs for backward.

    Autograd through the elementwise formula keeps ~15 (M, P) intermediates per decoder
    layer alive until backward (12544 points x ~200 units: ~10 MB each, x 10 layers); this
    saves the four inputs, which exist anyway, and recomputes the factors in backward.
    """

    @staticmethod
    def forward(ctx, p, log_p, log_1mp, targets, alpha, gamma):
        _, base, alpha_t, ce = _focal_terms(p, log_p, log_1mp, targets, alpha, gamma)
        loss = ce.mul_(base.pow_(gamma))
        if alpha_t is not None:
            loss.mul_(alpha_t)
        ctx.save_for_backward(p, log_p, log_1mp, targets)
        ctx.alpha, ctx.gamma = alpha, gamma
        return loss.mean(-1)

    @staticmethod
    def backward(ctx, grad):
        p, log_p, log_1mp, targets = ctx.saved_tensors
        alpha, gamma = ctx.alpha, ctx.gamma
        one_minus_pt, base, alpha_t, ce = _focal_terms(p, log_p, log_1mp, targets, alpha, gamma)
        # Upstream gradient of each point: d mean / d point = 1 / P.
        g = (grad / p.shape[-1]).unsqueeze(-1).expand_as(p)
        if alpha_t is not None:
            g = g * alpha_t
        weight = base.pow(gamma)
        grad_p = grad_log_p = grad_log_1mp = None
        if ctx.needs_input_grad[0]:
            # d/dp of (1 - p_t)^gamma = gamma (1 - p_t)^(gamma - 1) (1 - 2t); the clamp at 0
            # passes the gradient where 1 - p_t >= 0 (as torch.clamp does).
            if gamma == 0.0:
                grad_p = torch.zeros_like(p)
            else:
                dw = base.pow(gamma - 1.0) if gamma != 1.0 else torch.ones_like(base)
                dw.mul_(gamma).mul_(1.0 - 2.0 * targets).mul_(one_minus_pt >= 0)
                grad_p = ce.mul_(dw).mul_(g)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gw = weight.mul_(g).neg_()
            if ctx.needs_input_grad[1]:
                grad_log_p = gw * targets
            if ctx.needs_input_grad[2]:
                grad_log_1mp = gw * (1.0 - targets)
        return grad_p, grad_log_p, grad_log_1mp, None, None, None


def focal_loss(
    pred: PointProbs, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al.) on probabilities, mean over points, per unit.

    Same values and gradients as the elementwise definition (tested), computed by a fused
    autograd function that keeps far less memory for backward.

    Args:
        pred: (M, P) probabilities and logs.
        targets: (M, P) targets in [0, 1].
        alpha: weight of positives (negatives get 1 - alpha); < 0 disables weighting.
        gamma: focusing exponent.

    Returns:
        (M,) loss of each unit.
    """
    targets = targets.to(pred.prob.dtype)
    return _FocalLoss.apply(pred.prob, pred.log_prob, pred.log_one_minus_prob, targets,
                            float(alpha), float(gamma))


class _SigmoidFocalDiceLoss(torch.autograd.Function):
    """Focal and dice losses of single-proposal units straight from their point logits.

    Keeps only the logits and the targets (uint8 for binary ones) for backward and
    recomputes the rest: the logs-based path keeps six (M, P) float tensors per decoder
    layer (probabilities, both logs, float targets, twice), ~40 MB per layer at 200 units x
    12544 points.
    """

    @staticmethod
    def _terms(x, t, alpha):
        p = torch.sigmoid(x)
        one_minus_p = 1.0 - p
        # softplus(x) - t x = max(x, 0) - t x + log(1 + e^-|x|), and
        # log(1 + e^-|x|) = -log(max(p, 1 - p)): one log, no second exp.
        ce = torch.maximum(p, one_minus_p).log_().neg_()
        ce.add_(x.clamp(min=0.0)).sub_(t * x)
        # 1 - p_t = p (1 - t) + (1 - p) t, written as a sum of non-negative products.
        one_minus_pt = p * (1.0 - t)
        one_minus_pt.add_(one_minus_p * t)
        alpha_t = None if alpha < 0 else t * (2.0 * alpha - 1.0) + (1.0 - alpha)
        return p, one_minus_p, ce, one_minus_pt, alpha_t

    @staticmethod
    def forward(ctx, x, targets, alpha, gamma):
        t = targets.to(x.dtype)
        p, _, ce, one_minus_pt, alpha_t = _SigmoidFocalDiceLoss._terms(x, t, alpha)
        focal = ce.mul_(one_minus_pt.pow_(gamma) if gamma != 1.0 else one_minus_pt)
        if alpha_t is not None:
            focal.mul_(alpha_t)
        numerator = 2.0 * (p * t).sum(-1) + 1.0
        denominator = p.sum(-1) + t.sum(-1) + 1.0
        ctx.save_for_backward(x, targets, numerator, denominator)
        ctx.alpha, ctx.gamma = alpha, gamma
        return focal.mean(-1), 1.0 - numerator / denominator

    @staticmethod
    def backward(ctx, grad_focal, grad_dice):
        x, targets, numerator, denominator = ctx.saved_tensors
        alpha, gamma = ctx.alpha, ctx.gamma
        t = targets.to(x.dtype)
        p, one_minus_p, ce, one_minus_pt, alpha_t = _SigmoidFocalDiceLoss._terms(x, t, alpha)
        dp_dx = p * one_minus_p
        grad = torch.zeros_like(x)
        if grad_focal is not None:
            # d/dx [ce w] with w = (1 - p_t)^gamma: (p - t) w + ce gamma (1 - p_t)^(gamma-1)
            # (1 - 2t) p (1 - p).
            if gamma != 0.0:
                dw = one_minus_pt.pow(gamma - 1.0) if gamma != 1.0 else torch.ones_like(x)
                dw.mul_(gamma).mul_(1.0 - 2.0 * t).mul_(dp_dx).mul_(ce)
            else:
                dw = torch.zeros_like(x)
            w = one_minus_pt.pow_(gamma) if gamma != 1.0 else one_minus_pt
            dfocal = (p - t).mul_(w).add_(dw)
            if alpha_t is not None:
                dfocal.mul_(alpha_t)
            grad.add_(dfocal.mul_((grad_focal / x.shape[-1]).unsqueeze(-1)))
        if grad_dice is not None:
            # dice = 1 - N / D: d/dp_j = (N - 2 t_j D) / D^2.
            d = denominator.unsqueeze(-1)
            ddice = (t * (-2.0 * d)).add_(numerator.unsqueeze(-1)).div_(d * d)
            grad.add_(ddice.mul_(dp_dx).mul_(grad_dice.unsqueeze(-1)))
        return grad, None, None, None


def sigmoid_focal_dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
):
    """Focal (mean over points) and dice losses per row of point LOGITS: two (M,) tensors.

    Equals ``focal_loss`` / ``dice_loss`` of ``sigmoid_with_logs(logits)`` (values and
    gradients, tested) for units that are one proposal, with far less memory kept for
    backward.

    Args:
        logits: (M, P) mask logits at the sampled points.
        targets: (M, P) targets in [0, 1]; uint8 / bool for binary targets (kept as bytes).
        alpha, gamma: focal parameters (alpha < 0 disables weighting).
    """
    if targets.dtype == torch.bool:
        targets = targets.view(torch.uint8)
    return _SigmoidFocalDiceLoss.apply(logits, targets, float(alpha), float(gamma))


def compiled_sigmoid_focal_dice_loss():
    """``sigmoid_focal_dice_loss`` compiled by ``torch.compile`` (inductor), as a callable.

    Fuses the loss's element-wise passes over the (M, P) points into a few kernels: on CPU,
    forward + backward of one decoder layer (200 units x 12,544 points) went from ~50 to ~9 ms
    (``benchmarks/fusion_potential_bench.py``) and the R50 criterion from 1.78 to 1.46 s per
    step. Compiles on first use (about 10 s for the two graphs, once per process) and needs a
    C++ compiler on CPU (Triton on GPU); shapes are dynamic, so the unit count does not
    trigger recompiles. The same arithmetic, equal up to float rounding (tested).
    """
    compiled = torch.compile(sigmoid_focal_dice_loss, dynamic=True)

    def point_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
        try:
            return compiled(logits, targets, alpha, gamma)
        except Exception as e:  # inductor reports a missing or broken toolchain in many types
            raise RuntimeError(
                "The compiled point loss failed (MODEL.DATASEG.CRITERION.COMPILE_POINT_LOSSES "
                f"True): {type(e).__name__}: {e}. torch.compile needs a working C++ compiler "
                "(g++ or clang) on CPU or Triton on GPU; install one, or set "
                "MODEL.DATASEG.CRITERION.COMPILE_POINT_LOSSES False for the eager loss."
            ) from e

    return point_loss


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Dice loss ``1 - (2|p t| + 1) / (|p| + |t| + 1)`` per unit over the last dim: (M,)."""
    numerator = 2.0 * (probs * targets).sum(-1) + 1.0
    denominator = probs.sum(-1) + targets.sum(-1) + 1.0
    return 1.0 - numerator / denominator


def class_nll_loss(
    log_probs: torch.Tensor, target_classes: torch.Tensor, no_object_weight: float
) -> torch.Tensor:
    """Softmax cross-entropy as NLL of (possibly merged) class log-probabilities.

    The background (last column) has weight ``no_object_weight``; the result is the weighted
    mean over units, as ``F.cross_entropy(weight=...)`` computes it.

    Args:
        log_probs: (N, C+1) log class probabilities of all units of the batch.
        target_classes: int64 (N,) matched label or C (background).
        no_object_weight: background class weight.
    """
    weight: Optional[torch.Tensor] = torch.ones(log_probs.shape[-1], device=log_probs.device)
    weight[-1] = no_object_weight
    return F.nll_loss(log_probs, target_classes, weight=weight)
