"""A weightless encoder for unit tests of the classifier's mechanics (NOT for training)."""

import hashlib
import logging
from typing import Sequence

import torch
from detectron2.config import configurable

from .base import TEXT_ENCODER_REGISTRY, EncoderInfo, TextEncoder

logger = logging.getLogger(__name__)


@TEXT_ENCODER_REGISTRY.register()
class Random(TextEncoder):
    """Deterministic pseudo-random vectors seeded by a hash of each text.

    The same text always maps to the same vector (in every process, unlike Python's ``hash``),
    but similar texts get unrelated vectors: no knowledge is shared between classes. Use it
    only to test shapes, gradients and plumbing without loading a language model.

    Args:
        dim: embedding width (``MODEL.DATASEG.TEXT.RANDOM_DIM``).
    """

    # Computing is as cheap as reading the cache, and tests should not write to ~/.cache.
    cacheable = False

    @configurable
    def __init__(self, *, dim: int = 64):
        if dim <= 0:
            raise ValueError(f"Random text encoder needs dim > 0, got {dim}.")
        self.dim = int(dim)
        logger.warning(
            "Using the 'Random' text encoder: class embeddings carry NO meaning (hash-seeded "
            "noise). Fine for unit tests; train with OpenCLIP or MiniLM "
            "(MODEL.DATASEG.TEXT.ENCODER)."
        )

    @classmethod
    def from_config(cls, cfg):
        return {"dim": cfg.MODEL.DATASEG.TEXT.RANDOM_DIM}

    @classmethod
    def describe(cls, dim: int = 64) -> EncoderInfo:
        return EncoderInfo(identity=f"Random/dim{int(dim)}", dim=int(dim))

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.empty(len(texts), self.dim)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            gen = torch.Generator().manual_seed(seed & ((1 << 63) - 1))
            out[i] = torch.randn(self.dim, generator=gen)
        return out
