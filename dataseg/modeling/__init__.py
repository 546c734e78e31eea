"""DaTaSeg network parts; importing this module registers them with detectron2."""

from .registry import (  # noqa: F401
    CLASSIFIER_REGISTRY,
    CRITERION_REGISTRY,
    PIXEL_DECODER_REGISTRY,
    TRANSFORMER_DECODER_REGISTRY,
)
from . import criterion  # noqa: F401,E402  (MergeCriterion, MERGE ops)
from .text_classifier import TextEmbeddingClassifier, build_classifier  # noqa: F401
from . import backbone, pixel_decoder, transformer_decoder  # noqa: F401,E402  (registration)
from .meta_arch import DaTaSeg  # noqa: F401,E402
