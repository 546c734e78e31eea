"""Reducing raw text embeddings to one classifier entry per class.

Two reductions happen, in this order:

1. **Templates** (always a mean): each synonym is embedded in every prompt template; the
   L2-normalised template embeddings are averaged and the mean is re-normalised.
2. **Synonyms** (``MODEL.DATASEG.TEXT.SYNONYM_REDUCTION``) for entries such as
   ``"tv, television, monitor"``:

   - ``"mean"`` (default): average the synonyms' normalised embeddings, re-normalise. The
     classifier sees ONE vector per class; cheap, and a rare synonym cannot dominate.
   - ``"max"``: keep one vector per synonym; a class's logit is the MAX of its synonyms'
     logits (the FC-CLIP/ODISE choice), so a query matching any one synonym well scores high.
     It acts on scores, so the classifier applies it (:meth:`VocabularyEmbeddings.reduce_scores`).
"""

from dataclasses import dataclass
from typing import List

import torch
import torch.nn.functional as F

__all__ = [
    "SYNONYM_REDUCTIONS",
    "VocabularyEmbeddings",
    "average_templates",
    "reduce_synonym_embeddings",
    "reduce_synonym_scores",
]

SYNONYM_REDUCTIONS = ("mean", "max")


def check_reduction(mode: str) -> str:
    if mode not in SYNONYM_REDUCTIONS:
        raise ValueError(
            f"Unknown synonym reduction {mode!r}; MODEL.DATASEG.TEXT.SYNONYM_REDUCTION must be "
            f"one of {SYNONYM_REDUCTIONS}."
        )
    return mode


def average_templates(embeddings: torch.Tensor) -> torch.Tensor:
    """(..., T, D) raw embeddings over T templates -> (..., D) normalised mean direction."""
    return F.normalize(F.normalize(embeddings, dim=-1).mean(dim=-2), dim=-1)


def reduce_synonym_embeddings(
    embeddings: torch.Tensor, class_index: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Mean over each class's synonyms: (N, D) per-synonym -> (C, D) normalised."""
    summed = embeddings.new_zeros(num_classes, embeddings.shape[-1])
    summed.index_add_(0, class_index, F.normalize(embeddings, dim=-1))
    return F.normalize(summed, dim=-1)


def reduce_synonym_scores(
    scores: torch.Tensor, class_index: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Max over each class's synonyms: (..., N) per-synonym scores -> (..., C)."""
    index = class_index.expand(*scores.shape[:-1], class_index.numel())
    out = scores.new_full((*scores.shape[:-1], num_classes), float("-inf"))
    return out.scatter_reduce(-1, index, scores, reduce="amax", include_self=True)


@dataclass
class VocabularyEmbeddings:
    """Text embeddings of one vocabulary, one row per synonym.

    Attributes:
        class_names: the vocabulary, as given (C entries).
        embeddings: (N, D) float32, L2-normalised, template-averaged; N >= C synonyms.
        class_index: (N,) int64, the class (0..C-1) each row belongs to, non-decreasing.
        reduction: ``"mean"`` or ``"max"``, how synonyms become one class.
    """

    class_names: List[str]
    embeddings: torch.Tensor
    class_index: torch.Tensor
    reduction: str = "mean"

    def __post_init__(self):
        check_reduction(self.reduction)
        n = self.embeddings.shape[0]
        if self.embeddings.ndim != 2 or self.class_index.shape != (n,):
            raise ValueError(
                f"embeddings must be (N, D) and class_index (N,); got "
                f"{tuple(self.embeddings.shape)} and {tuple(self.class_index.shape)}."
            )
        present = torch.unique(self.class_index)
        if present.numel() != self.num_classes or (
            n and (present.min() != 0 or present.max() != self.num_classes - 1)
        ):
            raise ValueError("class_index must give every class at least one embedding row.")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def has_synonyms(self) -> bool:
        return self.embeddings.shape[0] != self.num_classes

    def class_embeddings(self) -> torch.Tensor:
        """(C, D) normalised, synonyms averaged (the ``"mean"`` classifier weights)."""
        if not self.has_synonyms:
            return F.normalize(self.embeddings, dim=-1)
        return reduce_synonym_embeddings(self.embeddings, self.class_index, self.num_classes)

    def classifier_weights(self) -> torch.Tensor:
        """Rows the classifier compares queries with: (C, D) for "mean", (N, D) for "max"."""
        if self.reduction == "max" and self.has_synonyms:
            return F.normalize(self.embeddings, dim=-1)
        return self.class_embeddings()

    def reduce_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Turn scores against :meth:`classifier_weights` (..., N or C) into (..., C)."""
        if scores.shape[-1] == self.num_classes:
            return scores
        return reduce_synonym_scores(scores, self.class_index.to(scores.device), self.num_classes)
