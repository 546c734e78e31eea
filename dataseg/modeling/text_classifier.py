"""DaTaSeg's only dataset-specific part: a classifier made of frozen text embeddings.

A query's class embedding is compared (cosine) with the text embeddings of the CURRENT
dataset's class names plus one learnable background embedding shared by all datasets. Because
classes live in a shared text space, "cilantro" in one dataset and "coriander" in another pull
queries the same way, and new names can be classified at inference without retraining.
"""

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ..text import VocabularyEmbeddings, build_text_embedding_provider
from ..text.ensemble import reduce_synonym_scores
from ..text.vocabulary import validate_class_names
from .mlp import MLP
from .registry import CLASSIFIER_REGISTRY

__all__ = ["TextEmbeddingClassifier", "UnknownVocabularyError", "build_classifier",
           "vocabulary_weights"]


class UnknownVocabularyError(KeyError):
    """``forward`` was asked for a vocabulary that was never set."""

    def __str__(self):  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


@CLASSIFIER_REGISTRY.register()
class TextEmbeddingClassifier(nn.Module):
    """Cosine classifier over named vocabularies of frozen text embeddings.

    ``logits = scale * cos(head(q), [E_vocab ; b])`` with ``E_vocab`` the vocabulary's frozen
    text embeddings, ``b`` the shared learnable background embedding (LAST column) and ``scale``
    a learnable (or fixed) temperature, clamped at ``logit_scale_max``.

    Text embeddings are non-persistent buffers: they follow ``.to(device)`` but stay out of
    checkpoints (they are a function of the class names and the text encoder, and a checkpoint
    must stay usable with new vocabularies).

    Args:
        hidden_dim: width of the query features fed to :meth:`forward`.
        embedding_provider: object with ``text_dim`` and ``embed(class_names) ->
            VocabularyEmbeddings`` (normally a :class:`dataseg.text.TextEmbeddingProvider`).
        class_head_layers: 1 = linear projection to the text width, >1 = MLP.
        logit_scale_init: initial temperature (CLIP: 1/0.07).
        logit_scale_max: upper clamp of the temperature.
        learn_logit_scale: False keeps the temperature fixed at ``logit_scale_init``.
    """

    @configurable
    def __init__(
        self,
        *,
        hidden_dim: int,
        embedding_provider,
        class_head_layers: int = 1,
        logit_scale_init: float = 1.0 / 0.07,
        logit_scale_max: float = 100.0,
        learn_logit_scale: bool = True,
    ):
        super().__init__()
        if not 0 < logit_scale_init <= logit_scale_max:
            raise ValueError(
                f"Need 0 < LOGIT_SCALE_INIT ({logit_scale_init}) <= LOGIT_SCALE_MAX "
                f"({logit_scale_max})."
            )
        self.embedding_provider = embedding_provider
        self.hidden_dim = hidden_dim
        self._text_dim = int(embedding_provider.text_dim)
        if class_head_layers < 1:
            raise ValueError(f"CLASS_HEAD_LAYERS must be >= 1, got {class_head_layers}.")
        self.class_head = MLP(hidden_dim, hidden_dim, self._text_dim, class_head_layers)
        self.background_embedding = nn.Parameter(torch.empty(self._text_dim))
        # Unit-norm-ish start: the embedding is normalised in forward, so only its direction
        # matters, and a random direction is nearly orthogonal to every class.
        nn.init.normal_(self.background_embedding, std=self._text_dim**-0.5)
        # Log-space keeps the temperature positive under any gradient step.
        log_scale = torch.tensor(math.log(logit_scale_init))
        if learn_logit_scale:
            self.logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("logit_scale", log_scale, persistent=False)
        self.logit_scale_max = float(logit_scale_max)
        # name -> (buffer name of the weights, buffer name of the synonym index or None)
        self._vocab_buffers: Dict[str, tuple] = {}
        self._vocab_class_names: Dict[str, List[str]] = {}

    @classmethod
    def from_config(cls, cfg, hidden_dim: Optional[int] = None, embedding_provider=None):
        d = cfg.MODEL.DATASEG
        return {
            "hidden_dim": hidden_dim if hidden_dim is not None else d.DECODER.HIDDEN_DIM,
            "embedding_provider": embedding_provider or build_text_embedding_provider(cfg),
            "class_head_layers": d.DECODER.CLASS_HEAD_LAYERS,
            "logit_scale_init": d.CLASSIFIER.LOGIT_SCALE_INIT,
            "logit_scale_max": d.CLASSIFIER.LOGIT_SCALE_MAX,
            "learn_logit_scale": d.CLASSIFIER.LEARN_LOGIT_SCALE,
        }

    # ---- vocabularies -----------------------------------------------------------------
    @property
    def text_dim(self) -> int:
        """Width of the text embeddings (and of the class head's output)."""
        return self._text_dim

    @property
    def vocabularies(self) -> List[str]:
        return list(self._vocab_buffers)

    def has_vocabulary(self, name: str) -> bool:
        return name in self._vocab_buffers

    def vocabulary_size(self, name: str) -> int:
        """Number of classes C of a vocabulary (logits have C+1 columns)."""
        return len(self.class_names(name))

    def class_names(self, name: str) -> List[str]:
        self._check_known(name)
        return list(self._vocab_class_names[name])

    def set_vocabulary(
        self,
        name: str,
        class_names: Sequence[str],
        embeddings: Optional[VocabularyEmbeddings] = None,
    ) -> None:
        """Embed ``class_names`` (through the cache) and store them as vocabulary ``name``.

        Replaces an existing vocabulary of that name, which is how open-vocabulary inference
        swaps in new class names.

        Args:
            name: vocabulary key, usually the dataset name.
            class_names: names in contiguous-id order; entries may hold comma-separated synonyms.
            embeddings: already computed embeddings to use instead of the provider's.
        Raises:
            ValueError: empty list, duplicate names after normalisation, or embeddings of the
                wrong width / class count.
        """
        names, weights, index = vocabulary_weights(
            name, class_names, self.embedding_provider, self._text_dim, embeddings)
        device = self.background_embedding.device
        weights = weights.detach().to(device)
        index = index.to(device) if index is not None else None
        if name in self._vocab_buffers:
            slot = self._vocab_buffers[name][0].rsplit("_", 1)[1]
        else:
            # Buffer names cannot contain "." (dataset names may); use a counter instead.
            slot = str(len(self._vocab_buffers))
        w_name, i_name = f"_vocab_weights_{slot}", f"_vocab_index_{slot}"
        self.register_buffer(w_name, weights, persistent=False)
        self.register_buffer(i_name, index, persistent=False)
        self._vocab_buffers[name] = (w_name, i_name)
        self._vocab_class_names[name] = names

    def _check_known(self, name: str) -> None:
        if name not in self._vocab_buffers:
            raise UnknownVocabularyError(
                f"Unknown vocabulary {name!r}; known: {sorted(self._vocab_buffers)}. Call "
                "set_vocabulary(name, class_names) first."
            )

    # ---- forward ----------------------------------------------------------------------
    def current_logit_scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.logit_scale_max)

    def forward(self, query_features: torch.Tensor, vocabulary: str) -> torch.Tensor:
        """Class logits of queries over a vocabulary plus background.

        Args:
            query_features: (..., hidden_dim).
            vocabulary: name given to :meth:`set_vocabulary`.
        Returns:
            (..., C+1) logits; column C (the last) is background.
        """
        self._check_known(vocabulary)
        w_name, i_name = self._vocab_buffers[vocabulary]
        weights, index = getattr(self, w_name), getattr(self, i_name)
        return self.score(query_features, weights, index,
                          len(self._vocab_class_names[vocabulary]))

    def score(self, query_features: torch.Tensor, weights: torch.Tensor,
              class_index: Optional[torch.Tensor] = None,
              num_classes: Optional[int] = None) -> torch.Tensor:
        """Class logits of queries against given classifier rows plus background.

        What :meth:`forward` computes for a stored vocabulary; the ONNX export calls it with
        the rows as a graph input (``dataseg.tools.export``).

        Args:
            query_features: (..., hidden_dim).
            weights: (N, text_dim) normalised rows (:func:`vocabulary_weights`).
            class_index: (N,) class of each row when rows are synonyms ("max" reduction),
                else None (one row per class).
            num_classes: C, with ``class_index``.
        Returns:
            (..., C+1) logits (N+1 without ``class_index``); the last column is background.
        """
        features = self.class_head(query_features)
        # Cosine logits in float32 even under autocast: near the logit scale's clamp (100) a
        # bfloat16 logit moves in steps of 0.25-0.5, the size of the margins between classes.
        dtype = torch.promote_types(features.dtype, torch.float32)
        with torch.autocast(features.device.type, enabled=False):
            x = F.normalize(features.to(dtype), dim=-1)
            scale = self.current_logit_scale().to(dtype)
            class_logits = scale * (x @ weights.to(dtype).t())
            if class_index is not None:  # "max" synonym reduction: best synonym per class
                class_logits = reduce_synonym_scores(class_logits, class_index, num_classes)
            background = F.normalize(self.background_embedding.to(dtype), dim=-1)
            bg_logit = scale * (x @ background).unsqueeze(-1)
            return torch.cat([class_logits, bg_logit], dim=-1)

    def extra_repr(self) -> str:
        return (
            f"text_dim={self._text_dim}, vocabularies={self.vocabularies}, "
            f"logit_scale_max={self.logit_scale_max}"
        )


def vocabulary_weights(name: str, class_names: Sequence[str], embedding_provider,
                       text_dim: int, embeddings: Optional[VocabularyEmbeddings] = None):
    """The classifier rows of a vocabulary, as :meth:`TextEmbeddingClassifier.set_vocabulary`
    stores them.

    Args:
        name: vocabulary key (for the messages).
        class_names: names in contiguous-id order; entries may hold comma-separated synonyms.
        embedding_provider: embeds the names when ``embeddings`` is None.
        text_dim: the width the classifier takes.
        embeddings: already computed embeddings to use instead of the provider's.
    Returns:
        (validated names, (N, text_dim) normalised rows, (N,) class of each row or None when
        there is one row per class).
    Raises:
        ValueError: empty list, duplicate names after normalisation, or embeddings of the
            wrong width / class count.
    """
    names = validate_class_names(class_names)
    vocab = embeddings if embeddings is not None else embedding_provider.embed(names)
    if vocab.dim != text_dim or vocab.num_classes != len(names):
        raise ValueError(
            f"Embeddings for {name!r} are {vocab.num_classes} classes x {vocab.dim} dims; "
            f"expected {len(names)} x {text_dim}."
        )
    weights = vocab.classifier_weights()
    index = vocab.class_index if weights.shape[0] != len(names) else None
    return names, weights, index


def build_classifier(cfg, hidden_dim: Optional[int] = None) -> nn.Module:
    """Build ``MODEL.DATASEG.CLASSIFIER.NAME`` from ``CLASSIFIER_REGISTRY``.

    Args:
        hidden_dim: width of the query features; default ``MODEL.DATASEG.DECODER.HIDDEN_DIM``.
    """
    return CLASSIFIER_REGISTRY.get(cfg.MODEL.DATASEG.CLASSIFIER.NAME)(cfg, hidden_dim=hidden_dim)
