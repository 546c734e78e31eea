"""Query decoders (registered in ``TRANSFORMER_DECODER_REGISTRY``)."""

from .masked_attention_decoder import (  # noqa: F401
    MLP,
    MaskedAttentionDecoder,
    build_transformer_decoder,
)
