"""Optimizer for DaTaSeg: AdamW (or SGD) with a smaller learning rate for the backbone."""

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

__all__ = ["build_dataseg_optimizer"]


def build_dataseg_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer of ``cfg.SOLVER`` for ``model``.

    The backbone's learning rate is ``SOLVER.BACKBONE_MULTIPLIER`` times the base rate (it
    starts from ImageNet/MAE weights; the heads start from scratch); normalisation layers get
    ``SOLVER.WEIGHT_DECAY_NORM``. Frozen parameters (e.g. a frozen stem) are skipped.
    """
    backbone_multiplier = cfg.SOLVER.BACKBONE_MULTIPLIER

    def lr_factor(name: str) -> float:
        return backbone_multiplier if name.startswith("backbone.") else 1.0

    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        lr_factor_func=lr_factor,
    )
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "ADAMW":
        optimizer_cls, kwargs = torch.optim.AdamW, {}
    elif name == "SGD":
        optimizer_cls, kwargs = torch.optim.SGD, {
            "momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {cfg.SOLVER.OPTIMIZER!r}")
    optimizer_cls = maybe_add_gradient_clipping(cfg, optimizer_cls)
    return optimizer_cls(params, lr=cfg.SOLVER.BASE_LR, **kwargs)
