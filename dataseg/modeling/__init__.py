"""DaTaSeg network parts; importing this module registers them with detectron2."""

from .registry import (  # noqa: F401
    CLASSIFIER_REGISTRY,
    CRITERION_REGISTRY,
    MERGE_REGISTRY,
    PIXEL_DECODER_REGISTRY,
    TRANSFORMER_DECODER_REGISTRY,
)
