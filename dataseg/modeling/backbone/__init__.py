"""Backbone glue: registers ViTDet in detectron2's BACKBONE_REGISTRY (ResNet is built in)."""

from .vitdet import build_vitdet_backbone  # noqa: F401
