import pytest
import torch

from dataseg.config import add_dataseg_config
from dataseg.modeling import TextEmbeddingClassifier, build_classifier
from dataseg.modeling.registry import CLASSIFIER_REGISTRY
from dataseg.text import TextEmbeddingProvider


def _cfg(**overrides):
    from detectron2.config import get_cfg

    cfg = add_dataseg_config(get_cfg())
    cfg.MODEL.DATASEG.TEXT.ENCODER = "Random"
    cfg.MODEL.DATASEG.TEXT.RANDOM_DIM = 16
    cfg.MODEL.DATASEG.DECODER.HIDDEN_DIM = 32
    for k, v in overrides.items():
        node, key = k.rsplit(".", 1)
        cfg.MODEL.DATASEG[node][key] = v
    return cfg


def _classifier(**kwargs):
    provider = TextEmbeddingProvider(encoder_name="Random", encoder_kwargs={"dim": 16})
    return TextEmbeddingClassifier(hidden_dim=32, embedding_provider=provider, **kwargs)


def test_registered_and_built_from_config():
    assert CLASSIFIER_REGISTRY.get("TextEmbeddingClassifier") is TextEmbeddingClassifier
    clf = build_classifier(_cfg(**{"DECODER.CLASS_HEAD_LAYERS": 2}), hidden_dim=24)
    assert clf.text_dim == 16 and clf.hidden_dim == 24
    assert [(m.in_features, m.out_features) for m in clf.class_head.layers] == [(24, 24), (24, 16)]
    assert len(build_classifier(_cfg()).class_head.layers) == 1


def test_logit_shapes_and_shared_background():
    clf = _classifier()
    clf.set_vocabulary("coco", ["person", "car", "sky"])
    clf.set_vocabulary("ade.v1", ["wall", "floor"])
    q = torch.randn(2, 5, 32)
    coco, ade = clf(q, "coco"), clf(q, "ade.v1")
    assert coco.shape == (2, 5, 4) and ade.shape == (2, 5, 3)
    assert clf(torch.randn(7, 32), "coco").shape == (7, 4)
    # Same background parameter for every vocabulary -> identical last column.
    assert torch.allclose(coco[..., -1], ade[..., -1])
    assert clf.vocabulary_size("coco") == 3 and clf.has_vocabulary("ade.v1")
    assert not clf.has_vocabulary("o365")


def test_embeddings_are_non_persistent_buffers_that_follow_the_module():
    clf = _classifier()
    clf.set_vocabulary("coco", ["person", "car"])
    keys = set(clf.state_dict())
    assert keys == {"background_embedding", "logit_scale", "class_head.layers.0.weight",
                    "class_head.layers.0.bias"}
    assert any(b.shape == (2, 16) for b in clf.buffers())
    clf = clf.double()
    assert clf(torch.randn(3, 32, dtype=torch.float64), "coco").dtype == torch.float64
    # A checkpoint without vocabularies loads into a model that has them.
    fresh = _classifier()
    fresh.set_vocabulary("other", ["a"])
    fresh.load_state_dict(_classifier().state_dict())


def test_gradients_reach_background_and_head_not_text():
    clf = _classifier()
    clf.set_vocabulary("coco", ["person", "car"])
    clf(torch.randn(4, 32), "coco").logsumexp(-1).sum().backward()
    assert (
        clf.background_embedding.grad is not None and clf.background_embedding.grad.abs().sum() > 0
    )
    assert clf.class_head.layers[0].weight.grad is not None and clf.logit_scale.grad is not None
    for buf in clf.buffers():
        assert not buf.requires_grad and buf.grad is None


def test_logit_scale_init_clamp_and_fixed():
    clf = _classifier(logit_scale_init=50.0, logit_scale_max=100.0)
    assert torch.isclose(clf.current_logit_scale(), torch.tensor(50.0))
    with torch.no_grad():
        clf.logit_scale.fill_(10.0)
    assert clf.current_logit_scale().item() == 100.0
    fixed = _classifier(learn_logit_scale=False)
    assert "logit_scale" not in dict(fixed.named_parameters())
    assert torch.isclose(fixed.current_logit_scale(), torch.tensor(1 / 0.07))
    with pytest.raises(ValueError):
        _classifier(logit_scale_init=200.0, logit_scale_max=100.0)


def test_logits_are_scaled_cosines():
    clf = _classifier(learn_logit_scale=False, logit_scale_init=1.0, logit_scale_max=1.0)
    clf.set_vocabulary("v", ["a", "b", "c"])
    logits = clf(torch.randn(10, 32), "v")
    assert logits.abs().max() <= 1.0 + 1e-5


def test_vocabulary_errors_and_replacement():
    clf = _classifier()
    with pytest.raises(KeyError, match=r"known: \[\]"):
        clf(torch.randn(1, 32), "coco")
    with pytest.raises(ValueError, match="empty"):
        clf.set_vocabulary("coco", [])
    with pytest.raises(ValueError, match="person"):
        clf.set_vocabulary("coco", ["person", "Person "])
    clf.set_vocabulary("coco", ["a", "b"])
    clf.set_vocabulary("coco", ["x", "y", "z"])  # open vocabulary: swap names at inference
    assert clf(torch.randn(1, 32), "coco").shape == (1, 4)
    assert clf.vocabularies == ["coco"] and clf.class_names("coco") == ["x", "y", "z"]


def test_max_synonym_reduction_takes_best_synonym():
    provider = TextEmbeddingProvider(
        encoder_name="Random", encoder_kwargs={"dim": 16}, synonym_reduction="max", templates="none"
    )
    clf = TextEmbeddingClassifier(hidden_dim=16, embedding_provider=provider)
    clf.set_vocabulary("v", ["tv, television", "cat"])
    with torch.no_grad():
        clf.class_head.layers[0].weight.copy_(torch.eye(16))
        clf.class_head.layers[0].bias.zero_()
    tv, television = provider.embed(["tv, television", "cat"]).embeddings[:2]
    logits = clf(torch.stack([tv, television]), "v")
    assert logits.shape == (2, 3)
    scale = clf.current_logit_scale()
    assert torch.allclose(logits[:, 0], scale.expand(2), atol=1e-4)  # each matches its synonym
    logits.sum().backward()
    assert clf.class_head.layers[0].weight.grad is not None


def test_logits_are_float32_under_bfloat16_autocast():
    clf = _classifier()
    clf.set_vocabulary("v", ["cat", "dog", "tree"])
    features = torch.randn(2, 5, 32)
    reference = clf(features, "v")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = clf(features.bfloat16(), "v")
    assert mixed.dtype == torch.float32
    # What remains is the bfloat16 class head (inputs and weights rounded to 8 bits).
    assert torch.allclose(mixed, reference, atol=0.05)
