"""Focal, dice and sigmoid-with-logs of point logits as fused autograd functions (CPU).

The fast paths of the plain formulas in ``criterion/losses.py`` (``focal_loss``,
``sigmoid_focal_dice_loss``) and ``criterion/merge.py`` (``sigmoid_with_logs``). Autograd
through the elementwise formulas keeps ~6-15 (M, P) intermediates per decoder layer alive
until backward (12,544 points x ~200 units: ~10 MB each, x 10 layers); these keep only their
inputs (or ``sigmoid(x)``) and recompute the rest in backward. Same values and gradients up to
float rounding, pinned by tests/modeling/fast_paths/test_point_losses.py.
"""

import torch

__all__ = ["fused_focal_loss", "fused_sigmoid_focal_dice_loss", "fused_sigmoid_with_logs"]


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


def _sigmoid_with_logs_values(x: torch.Tensor):
    # The formula of ``criterion.merge.sigmoid_with_logs`` (the test pins the two equal).
    log_p = x.clamp(max=0.0) - torch.log(1.0 + torch.exp(-x.abs()))
    return torch.sigmoid(x), log_p, log_p - x


class _SigmoidWithLogs(torch.autograd.Function):
    """The three outputs with a closed-form backward that keeps only sigmoid(x).

    Autograd through the formula keeps ~6 (N, P) intermediates (clamp mask, exp, abs, ...)
    per decoder layer until backward; here d/dx is ``s(1-s) g_s + (1-s) g_logp - s g_log1mp``.
    """

    @staticmethod
    def forward(ctx, x):
        prob, log_p, log_1mp = _sigmoid_with_logs_values(x)
        ctx.save_for_backward(prob)
        return prob, log_p, log_1mp

    @staticmethod
    def backward(ctx, g_prob, g_log_p, g_log_1mp):
        (s,) = ctx.saved_tensors
        grad = torch.zeros_like(s)
        if g_prob is not None:
            grad.addcmul_(g_prob, s * (1.0 - s))
        if g_log_p is not None:
            grad.addcmul_(g_log_p, 1.0 - s)
        if g_log_1mp is not None:
            grad.addcmul_(g_log_1mp, s, value=-1.0)
        return grad


def fused_focal_loss(prob, log_prob, log_one_minus_prob, targets, alpha: float, gamma: float):
    """``criterion.losses.focal_loss`` of (M, P) probabilities and their logs: (M,)."""
    return _FocalLoss.apply(prob, log_prob, log_one_minus_prob, targets, float(alpha),
                            float(gamma))


def fused_sigmoid_focal_dice_loss(logits, targets, alpha: float, gamma: float):
    """``criterion.losses.sigmoid_focal_dice_loss`` of (M, P) logits: focal and dice, (M,) each.

    ``targets`` may stay uint8 (kept as bytes for backward); bool is viewed as uint8.
    """
    if targets.dtype == torch.bool:
        targets = targets.view(torch.uint8)
    return _SigmoidFocalDiceLoss.apply(logits, targets, float(alpha), float(gamma))


def fused_sigmoid_with_logs(x: torch.Tensor):
    """``criterion.merge.sigmoid_with_logs(x)`` keeping only ``sigmoid(x)`` for backward."""
    return _SigmoidWithLogs.apply(x)
