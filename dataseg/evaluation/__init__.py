"""Per-dataset evaluator wiring (metadata-driven)."""

from .checks import CheckedDatasetEvaluators, NoPredictionsError
from .build import (
    EVALUATOR_REGISTRY,
    build_dataseg_evaluator,
    check_evaluator,
    register_evaluator,
)
from .coco import DaTaSegCOCOEvaluator
from .panoptic import DaTaSegCOCOPanopticEvaluator

__all__ = ["EVALUATOR_REGISTRY", "build_dataseg_evaluator", "register_evaluator",
           "DaTaSegCOCOEvaluator", "DaTaSegCOCOPanopticEvaluator", "CheckedDatasetEvaluators",
           "NoPredictionsError"]
