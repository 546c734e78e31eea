import numpy as np
import pytest
import torch

from dataseg.text import MissingEmbeddingError, Precomputed, TextEmbeddingProvider


def test_pt_file_route_through_provider(tmp_path):
    path = tmp_path / "emb.pt"
    table = torch.randn(3, 5)
    torch.save({"class_names": ["Cat", "dog", "tv, television"], "embeddings": table}, path)
    provider = TextEmbeddingProvider(encoder_name="Precomputed", encoder_kwargs={"path": str(path)})
    assert provider.text_dim == 5
    vocab = provider.embed(["tv, television", "cat"])  # case-insensitive lookup, any order
    expected = torch.nn.functional.normalize(table[[2, 0]], dim=-1)
    assert torch.allclose(vocab.class_embeddings(), expected)
    with pytest.raises(MissingEmbeddingError, match=r"\['horse', 'zebra'\]"):
        provider.embed(["cat", "horse", "zebra"])


def test_npz_file(tmp_path):
    path = tmp_path / "emb.npz"
    np.savez(path, class_names=np.array(["a", "b"]), embeddings=np.eye(2, dtype=np.float32))
    enc = Precomputed(path=str(path))
    assert torch.equal(enc.encode(["b"]), torch.tensor([[0.0, 1.0]]))


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="PRECOMPUTED_PATH"):
        Precomputed(path="")
    with pytest.raises(FileNotFoundError):
        Precomputed(path=str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    torch.save({"class_names": ["a"], "embeddings": torch.zeros(2, 3)}, bad)
    with pytest.raises(ValueError, match="len"):
        Precomputed(path=str(bad))
