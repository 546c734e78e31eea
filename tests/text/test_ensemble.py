import pytest
import torch
import torch.nn.functional as F

from dataseg.text.ensemble import (
    VocabularyEmbeddings,
    average_templates,
    reduce_synonym_embeddings,
    reduce_synonym_scores,
)


def test_average_templates_is_mean_of_normalised():
    raw = torch.tensor([[[3.0, 0.0], [0.0, 0.5]]])  # one synonym, two templates
    out = average_templates(raw)
    assert torch.allclose(out, F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1))


def test_synonym_mean_and_max():
    e = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    idx = torch.tensor([0, 0, 1])  # class 0 has two synonyms
    mean = reduce_synonym_embeddings(e, idx, 2)
    assert torch.allclose(mean[0], F.normalize(torch.tensor([1.0, 1.0]), dim=0))
    scores = torch.tensor([[0.2, 0.9, 0.1], [0.7, 0.3, 0.5]])
    assert torch.allclose(
        reduce_synonym_scores(scores, idx, 2), torch.tensor([[0.9, 0.1], [0.7, 0.5]])
    )


def test_vocabulary_embeddings_weights_per_reduction():
    e = F.normalize(torch.randn(3, 4), dim=-1)
    idx = torch.tensor([0, 0, 1])
    mean = VocabularyEmbeddings(["a, b", "c"], e, idx, "mean")
    mx = VocabularyEmbeddings(["a, b", "c"], e, idx, "max")
    assert mean.classifier_weights().shape == (2, 4)
    assert mx.classifier_weights().shape == (3, 4)
    assert mx.reduce_scores(torch.randn(5, 3)).shape == (5, 2)
    with pytest.raises(ValueError):
        VocabularyEmbeddings(["a", "b"], e, torch.tensor([0, 0, 0]))
    with pytest.raises(ValueError):
        VocabularyEmbeddings(["a"], e[:1], torch.tensor([0]), "median")
