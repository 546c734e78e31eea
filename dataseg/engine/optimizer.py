"""Optimizer for DaTaSeg: AdamW (or SGD) with a smaller learning rate for the backbone and,
for ViT backbones, ViTDet's layer-wise learning-rate decay."""

import re

import torch
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

__all__ = ["build_dataseg_optimizer", "dataseg_lr_factor_func"]

# A ViT block parameter as detectron2's get_vit_lr_decay_rate reads it ("backbone...blocks.N.").
_VIT_BLOCK = re.compile(r"^backbone\..*\.blocks\.\d+\.")


def dataseg_lr_factor_func(cfg, param_names=()):
    """The ``name -> learning-rate factor`` function of ``cfg.SOLVER``.

    A backbone parameter's factor is ``SOLVER.BACKBONE_MULTIPLIER`` times, when
    ``SOLVER.VIT_LAYER_DECAY_RATE`` is not 1, ViTDet's layer-wise decay
    ``rate ** (depth + 1 - layer)`` from detectron2's ``get_vit_lr_decay_rate``, with
    ``depth = MODEL.VIT.DEPTH``: the patch and position embeddings are layer 0, block ``N``
    is layer ``N + 1``, everything after the last block (the simple feature pyramid) keeps
    the full rate. Other parameters get 1.

    Args:
        param_names: the model's parameter names; when given, a decay rate other than 1 on a
            model without ViT blocks is refused (it would silently do nothing).
    """
    multiplier = float(cfg.SOLVER.BACKBONE_MULTIPLIER)
    decay = float(cfg.SOLVER.VIT_LAYER_DECAY_RATE)
    if not 0.0 < decay <= 1.0:
        raise ValueError(
            f"SOLVER.VIT_LAYER_DECAY_RATE must be in (0, 1] (1 = no decay; ViTDet uses 0.7 for "
            f"ViT-B, 0.8 for ViT-L), got {decay}.")
    num_layers = int(cfg.MODEL.VIT.DEPTH)
    if decay != 1.0 and param_names and not any(_VIT_BLOCK.match(n) for n in param_names):
        raise ValueError(
            f"SOLVER.VIT_LAYER_DECAY_RATE is {decay} but the model has no ViT blocks "
            f"(MODEL.BACKBONE.NAME is {cfg.MODEL.BACKBONE.NAME!r}); the layer decay applies to "
            "build_vitdet_backbone only. Set SOLVER.VIT_LAYER_DECAY_RATE 1.0 for this backbone.")

    def lr_factor(name: str) -> float:
        if not name.startswith("backbone."):
            return 1.0
        if decay == 1.0:
            return multiplier
        return multiplier * get_vit_lr_decay_rate(name, decay, num_layers)

    return lr_factor


def build_dataseg_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Build the optimizer of ``cfg.SOLVER`` for ``model``.

    Learning rates are ``SOLVER.BASE_LR`` times :func:`dataseg_lr_factor_func` (the backbone
    starts from ImageNet/MAE weights, the heads from scratch); normalisation layers get
    ``SOLVER.WEIGHT_DECAY_NORM``. Frozen parameters (e.g. a frozen stem) are skipped.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        lr_factor_func=dataseg_lr_factor_func(cfg, names),
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
