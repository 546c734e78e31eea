"""Registered text encoders; importing this package registers them."""

from .base import (  # noqa: F401
    TEXT_ENCODER_REGISTRY,
    EncoderInfo,
    TextEncoder,
    TextEncoderUnavailableError,
    build_text_encoder,
    get_text_encoder_class,
)
from .minilm_encoder import MiniLM  # noqa: F401
from .openclip_encoder import OpenCLIP, resolve_openclip_weights  # noqa: F401
from .precomputed_encoder import (  # noqa: F401
    MissingEmbeddingError,
    Precomputed,
    load_precomputed_embeddings,
)
from .random_encoder import Random  # noqa: F401
