"""Text side of DaTaSeg's classifier: encoders, prompt templates, synonyms, embedding cache.

``dataseg.modeling.TextEmbeddingClassifier`` uses a :class:`TextEmbeddingProvider` to turn each
dataset's class names into frozen embeddings. ``python -m dataseg.text`` precomputes them and
shows which classes of different datasets are close.
"""

from .cache import EmbeddingCache, default_cache_dir, resolve_cache_dir  # noqa: F401
from .encoders import (  # noqa: F401  (registers the encoders)
    TEXT_ENCODER_REGISTRY,
    EncoderInfo,
    MiniLM,
    MissingEmbeddingError,
    OpenCLIP,
    Precomputed,
    Random,
    TextEncoder,
    TextEncoderUnavailableError,
    build_text_encoder,
    get_text_encoder_class,
    load_precomputed_embeddings,
)
from .ensemble import (  # noqa: F401
    SYNONYM_REDUCTIONS,
    VocabularyEmbeddings,
    average_templates,
    reduce_synonym_embeddings,
    reduce_synonym_scores,
)
from .provider import TextEmbeddingProvider, build_text_embedding_provider  # noqa: F401
from .templates import TEMPLATE_SETS, get_templates, register_template_set  # noqa: F401
from .vocabulary import (  # noqa: F401
    dataset_class_names,
    match_class_names,
    normalize_class_name,
    parse_classes,
    split_synonyms,
    validate_class_names,
)
