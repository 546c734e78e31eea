"""Vocabulary -> text embeddings: templates, synonyms, cache, lazily built encoder."""

import logging
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable

from .cache import EmbeddingCache, resolve_cache_dir
from .encoders.base import EncoderInfo, TextEncoder, get_text_encoder_class
from .ensemble import VocabularyEmbeddings, average_templates, check_reduction
from .templates import fill_template, get_templates
from .vocabulary import split_synonyms, validate_class_names

__all__ = ["TextEmbeddingProvider", "build_text_embedding_provider"]

logger = logging.getLogger(__name__)


class TextEmbeddingProvider:
    """Turns class-name lists into normalised, template-ensembled text embeddings.

    The encoder is described (identity, width) at construction but only LOADED on the first
    cache miss, so a run whose vocabularies are all cached never loads a text model.

    Args:
        encoder_name: registered encoder (``MODEL.DATASEG.TEXT.ENCODER``).
        encoder_kwargs: its constructor arguments (what its ``from_config`` returns).
        templates: template-set name (``MODEL.DATASEG.TEXT.TEMPLATES``) or explicit list.
        synonym_reduction: ``"mean"`` or ``"max"`` (see ``dataseg.text.ensemble``).
        cache_dir: cache folder; None/"" = ``$DATASEG_CACHE`` or ``~/.cache/dataseg``
            (``/text_embeddings`` below either).
        use_cache: False to always recompute (the encoder may also opt out).
    """

    @configurable
    def __init__(
        self,
        *,
        encoder_name: str,
        encoder_kwargs: Optional[dict] = None,
        templates: Union[str, Sequence[str]] = "imagenet_short",
        synonym_reduction: str = "mean",
        cache_dir: Optional[str] = None,
        use_cache: bool = True,
    ):
        self.encoder_name = encoder_name
        self.encoder_class = get_text_encoder_class(encoder_name)
        self.encoder_kwargs = dict(encoder_kwargs or {})
        self.info: EncoderInfo = self.encoder_class.describe(**self.encoder_kwargs)
        self.templates = get_templates(templates)
        self.synonym_reduction = check_reduction(synonym_reduction)
        self.cache = (
            EmbeddingCache(resolve_cache_dir(cache_dir))
            if use_cache and self.encoder_class.cacheable
            else None
        )
        self._encoder: Optional[TextEncoder] = None
        self.num_encoder_builds = 0

    @classmethod
    def from_config(cls, cfg):
        t = cfg.MODEL.DATASEG.TEXT
        return {
            "encoder_name": t.ENCODER,
            "encoder_kwargs": get_text_encoder_class(t.ENCODER).from_config(cfg),
            "templates": t.TEMPLATES,
            "synonym_reduction": t.SYNONYM_REDUCTION,
            "cache_dir": t.CACHE_DIR,
        }

    @property
    def text_dim(self) -> int:
        return self.info.dim

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    @property
    def encoder(self) -> TextEncoder:
        """The text encoder, loaded on first access."""
        if self._encoder is None:
            logger.info(f"Loading text encoder {self.info.identity} ...")
            self._encoder = self.encoder_class(**self.encoder_kwargs)
            self.num_encoder_builds += 1
        return self._encoder

    def release_encoder(self) -> None:
        """Free the text model (e.g. after all training vocabularies are embedded)."""
        self._encoder = None

    def _effective_templates(self):
        return () if self.encoder_class.embeds_class_names else self.templates

    def embed(self, class_names: Sequence[str]) -> VocabularyEmbeddings:
        """Embed a vocabulary (through the cache).

        Returns:
            :class:`VocabularyEmbeddings` with one normalised row per synonym.
        Raises:
            ValueError: empty list or duplicate names after normalisation.
        """
        names = validate_class_names(class_names)
        key = None
        if self.cache is not None:
            key = EmbeddingCache.make_key(self.info.identity, self._effective_templates(), names)
            hit = self.cache.load(key)
            if hit is not None:
                return VocabularyEmbeddings(names, hit[0], hit[1], self.synonym_reduction)
        embeddings, class_index = self._compute(names)
        if key is not None:
            self.cache.save(key, embeddings, class_index)
        return VocabularyEmbeddings(names, embeddings, class_index, self.synonym_reduction)

    def embed_classes(self, class_names: Sequence[str]) -> torch.Tensor:
        """(C, D) normalised, one row per class (synonyms averaged)."""
        return self.embed(class_names).class_embeddings()

    def _compute(self, names):
        encoder = self.encoder
        if encoder.embeds_class_names:
            embeddings = encoder.encode(names)
            class_index = torch.arange(len(names))
        else:
            synonyms = [split_synonyms(n) for n in names]
            texts = [fill_template(t, s) for syns in synonyms for s in syns for t in self.templates]
            logger.info(
                f"Embedding {len(names)} classes ({len(texts)} prompts) with {self.info.identity}."
            )
            raw = encoder.encode(texts)
            embeddings = average_templates(raw.reshape(-1, len(self.templates), raw.shape[-1]))
            class_index = torch.repeat_interleave(
                torch.arange(len(names)), torch.tensor([len(s) for s in synonyms])
            )
        if embeddings.shape[-1] != self.info.dim:
            raise RuntimeError(
                f"Encoder {self.info.identity} produced width {embeddings.shape[-1]} but "
                f"describes itself as {self.info.dim}."
            )
        return F.normalize(embeddings.float(), dim=-1), class_index


def build_text_embedding_provider(cfg) -> TextEmbeddingProvider:
    """Provider configured by ``MODEL.DATASEG.TEXT.*``."""
    return TextEmbeddingProvider(cfg)
