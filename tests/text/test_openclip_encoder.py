import json

import pytest
import torch

from dataseg.text import OpenCLIP, TextEmbeddingProvider, TextEncoderUnavailableError
from dataseg.text.encoders import openclip_encoder

open_clip = pytest.importorskip("open_clip")

TINY = "dataseg-test-tiny-clip"


def test_offline_tag_fails_fast_with_actionable_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Behave as on a machine that never downloaded the weights, whatever this one holds.
    monkeypatch.setattr(openclip_encoder, "_cached_tag_file", lambda cfg: None)
    provider = TextEmbeddingProvider(
        encoder_name="OpenCLIP", encoder_kwargs={"model_name": "ViT-L-14", "pretrained": "openai"}
    )
    assert provider.text_dim == 768  # sizing the classifier needs no weights

    def no_model(*args, **kwargs):
        raise AssertionError("the offline check must fail before building or downloading")

    # Failing fast means: no model is built and nothing is fetched (a ViT-L/14 build alone
    # takes many seconds before any download would be tried).
    monkeypatch.setattr(open_clip, "create_model", no_model)
    with pytest.raises(TextEncoderUnavailableError) as info:
        provider.embed(["cat"])
    message = str(info.value)
    assert "MODEL.DATASEG.TEXT.OPENCLIP_PRETRAINED /path/to/file" in message
    assert "MODEL.DATASEG.TEXT.ENCODER MiniLM" in message
    assert "random" in message  # says it will not silently use random weights


def test_missing_file_and_unknown_tag():
    with pytest.raises(TextEncoderUnavailableError, match="no such checkpoint"):
        OpenCLIP(model_name="RN50", pretrained="/nonexistent/clip.pt")
    with pytest.raises(ValueError, match="known tags"):
        openclip_encoder.resolve_openclip_weights("RN50", "no-such-tag")


def test_local_checkpoint_route(tmp_path):
    config = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 16,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    (tmp_path / f"{TINY}.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / f"{TINY}.json")
    torch.manual_seed(0)
    reference = open_clip.create_model(TINY, pretrained=None).eval()
    ckpt = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), ckpt)

    enc = OpenCLIP(model_name=TINY, pretrained=str(ckpt))
    texts = ["a photo of a cat.", "a photo of a truck."]
    with torch.no_grad():
        expected = reference.encode_text(open_clip.get_tokenizer(TINY)(texts))
    assert torch.allclose(enc.encode(texts), expected, atol=1e-5)
    info = OpenCLIP.describe(model_name=TINY, pretrained=str(ckpt))
    assert info.dim == 32 and "file:" in info.identity
