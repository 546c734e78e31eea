"""The text-encoder contract and its registry.

A text encoder turns strings into vectors. Loading one can take seconds (or fail offline), so
everything the rest of the system needs BEFORE embedding, the encoder's identity (for the
cache key) and its output width (to size the classifier), comes from the cheap classmethod
:meth:`TextEncoder.describe`, which never loads weights. The encoder itself is constructed only
when embeddings are actually missing from the cache.
"""

from dataclasses import dataclass
from typing import List, Sequence

import torch
from detectron2.utils.registry import Registry

__all__ = [
    "TEXT_ENCODER_REGISTRY",
    "EncoderInfo",
    "TextEncoder",
    "TextEncoderUnavailableError",
    "build_text_encoder",
    "get_text_encoder_class",
]

TEXT_ENCODER_REGISTRY = Registry("DATASEG_TEXT_ENCODER")
TEXT_ENCODER_REGISTRY.__doc__ = """
Text encoders (subclasses of ``dataseg.text.TextEncoder``), selected by
``MODEL.DATASEG.TEXT.ENCODER``. The registered name is the class name.
"""


class TextEncoderUnavailableError(RuntimeError):
    """The configured text encoder cannot be loaded (missing package or weights)."""


@dataclass(frozen=True)
class EncoderInfo:
    """What is known about an encoder without loading it.

    Attributes:
        identity: stable string naming the encoder AND its weights; part of the cache key, so
            two encoders giving different vectors must never share an identity.
        dim: width of the embeddings.
    """

    identity: str
    dim: int


class TextEncoder:
    """Base class of the registered text encoders.

    Subclasses provide a ``@configurable`` ``__init__`` (which loads the model, possibly slowly)
    with a ``from_config(cls, cfg) -> dict`` classmethod, the cheap :meth:`describe`, and
    :meth:`encode`.

    Class attributes:
        embeds_class_names: True when the encoder maps whole vocabulary entries to vectors
            (e.g. a lookup table): prompt templates and synonym splitting are then skipped.
        cacheable: False when going through the on-disk cache would not save anything.
    """

    embeds_class_names: bool = False
    cacheable: bool = True

    @classmethod
    def from_config(cls, cfg) -> dict:
        raise NotImplementedError

    @classmethod
    def describe(cls, **kwargs) -> EncoderInfo:
        """Identity and width for the constructor arguments ``kwargs``; loads no weights."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed ``texts`` -> (len(texts), dim) float32 CPU tensor (any norm)."""
        raise NotImplementedError


def get_text_encoder_class(name: str) -> type:
    """Registered encoder class by config name, with the known names on failure."""
    if name not in TEXT_ENCODER_REGISTRY:
        known = sorted(k for k, _ in TEXT_ENCODER_REGISTRY)
        raise KeyError(
            f"Unknown text encoder {name!r} (MODEL.DATASEG.TEXT.ENCODER); registered: {known}."
        )
    return TEXT_ENCODER_REGISTRY.get(name)


def build_text_encoder(cfg) -> TextEncoder:
    """Construct (and load) the encoder named by ``MODEL.DATASEG.TEXT.ENCODER``."""
    return get_text_encoder_class(cfg.MODEL.DATASEG.TEXT.ENCODER)(cfg)


def encode_in_chunks(fn, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Run ``fn`` on slices of ``texts`` so memory stays bounded for 1000s of prompts."""
    texts: List[str] = list(texts)
    if not texts:
        raise ValueError("Nothing to encode: the text list is empty.")
    chunks = [fn(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    return torch.cat([c.detach().float().cpu() for c in chunks], dim=0)
