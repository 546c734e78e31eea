import pytest
import torch

from dataseg.config import add_dataseg_config
from dataseg.text import TextEmbeddingProvider, build_text_embedding_provider


def _cfg(**text):
    from detectron2.config import get_cfg

    cfg = add_dataseg_config(get_cfg())
    for k, v in text.items():
        cfg.MODEL.DATASEG.TEXT[k] = v
    return cfg


def test_minilm_full_path_is_meaningful_and_cached(tmp_path):
    cfg = _cfg(ENCODER="MiniLM", TEMPLATES="imagenet_short", CACHE_DIR=str(tmp_path))
    provider = build_text_embedding_provider(cfg)
    names = ["cilantro", "coriander", "truck"]
    emb = provider.embed_classes(names)
    assert emb.shape == (3, 384) and provider.num_encoder_builds == 1
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    cilantro, coriander, truck = emb
    assert cilantro @ coriander > cilantro @ truck

    again = build_text_embedding_provider(cfg)
    assert torch.equal(again.embed_classes(names), emb)
    assert not again.encoder_loaded  # the cache answered; no text model was loaded


def test_synonym_reductions_share_the_cache(tmp_path):
    kwargs = dict(encoder_name="MiniLM", templates="single", cache_dir=str(tmp_path))
    names = ["tv, television, monitor", "cat"]
    mean = TextEmbeddingProvider(synonym_reduction="mean", **kwargs).embed(names)
    mx_provider = TextEmbeddingProvider(synonym_reduction="max", **kwargs)
    mx = mx_provider.embed(names)
    assert not mx_provider.encoder_loaded
    assert mean.embeddings.shape == (4, 384) and mean.class_index.tolist() == [0, 0, 0, 1]
    assert mean.classifier_weights().shape == (2, 384)
    assert mx.classifier_weights().shape == (4, 384)
    # "mean" = normalised average of the three synonyms' (template-averaged) embeddings.
    expected = torch.nn.functional.normalize(mean.embeddings[:3].mean(0), dim=0)
    assert torch.allclose(mean.class_embeddings()[0], expected, atol=1e-6)


def test_random_encoder_skips_disk_cache(tmp_path):
    provider = build_text_embedding_provider(
        _cfg(ENCODER="Random", RANDOM_DIM=8, CACHE_DIR=str(tmp_path))
    )
    assert provider.embed_classes(["a", "b"]).shape == (2, 8)
    assert not list(tmp_path.iterdir())


def test_config_errors():
    with pytest.raises(KeyError, match="registered"):
        build_text_embedding_provider(_cfg(ENCODER="NoSuchEncoder"))
    with pytest.raises(ValueError, match="SYNONYM_REDUCTION"):
        build_text_embedding_provider(_cfg(ENCODER="Random", SYNONYM_REDUCTION="median"))
