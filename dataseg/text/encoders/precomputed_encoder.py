"""Class embeddings read from a file, for users who embed their vocabularies offline once."""

import os
from typing import List, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable

from ..vocabulary import normalize_class_name
from .base import TEXT_ENCODER_REGISTRY, EncoderInfo, TextEncoder

__all__ = ["Precomputed", "MissingEmbeddingError", "load_precomputed_embeddings"]


class MissingEmbeddingError(KeyError):
    """Some requested class names have no row in the precomputed-embedding file."""

    def __str__(self):  # KeyError would print the message inside quotes
        return str(self.args[0]) if self.args else ""


def load_precomputed_embeddings(path: str) -> Tuple[List[str], torch.Tensor]:
    """Read ``{"class_names": [...], "embeddings": (C, D)}`` from a .pt/.pth or .npz file.

    ``python -m dataseg.text --output file.pt`` writes this format.
    """
    if not path:
        raise ValueError(
            "The Precomputed text encoder needs MODEL.DATASEG.TEXT.PRECOMPUTED_PATH (a .pt or "
            ".npz file with 'class_names' and 'embeddings'; `python -m dataseg.text --output` "
            "writes one)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Precomputed text-embedding file not found: {path}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["class_names"].tolist()]
            embeddings = torch.from_numpy(np.asarray(data["embeddings"], dtype=np.float32))
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(data, dict) or "class_names" not in data or "embeddings" not in data:
            raise ValueError(f"{path} must hold a dict with keys 'class_names' and 'embeddings'.")
        names = [str(n) for n in data["class_names"]]
        embeddings = torch.as_tensor(data["embeddings"]).float()
    if embeddings.ndim != 2 or embeddings.shape[0] != len(names):
        raise ValueError(
            f"{path}: 'embeddings' must be (C, D) with C = len(class_names) = {len(names)}; "
            f"got {tuple(embeddings.shape)}."
        )
    return names, embeddings


@TEXT_ENCODER_REGISTRY.register()
class Precomputed(TextEncoder):
    """Looks vocabulary entries up in a precomputed table (no text model is loaded).

    Names match after normalisation (lowercase, strip). Entries are whole vocabulary strings,
    so templates and synonym splitting do not apply: they were the producer's business.

    Args:
        path: the file (``MODEL.DATASEG.TEXT.PRECOMPUTED_PATH``).
    """

    embeds_class_names = True
    # The file already is a cache.
    cacheable = False

    @configurable
    def __init__(self, *, path: str):
        self.path = path
        names, self.embeddings = load_precomputed_embeddings(path)
        self.index = {}
        for i, name in enumerate(names):
            self.index.setdefault(normalize_class_name(name), i)

    @classmethod
    def from_config(cls, cfg):
        return {"path": cfg.MODEL.DATASEG.TEXT.PRECOMPUTED_PATH}

    @classmethod
    def describe(cls, path: str) -> EncoderInfo:
        _, embeddings = load_precomputed_embeddings(path)
        stat = os.stat(path)
        identity = f"Precomputed/{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
        return EncoderInfo(identity=identity, dim=embeddings.shape[1])

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        keys = [normalize_class_name(t) for t in texts]
        missing = [t for t, k in zip(texts, keys) if k not in self.index]
        if missing:
            raise MissingEmbeddingError(
                f"{len(missing)} class name(s) have no embedding in {self.path}: {missing[:20]}"
                f"{' ...' if len(missing) > 20 else ''}. Re-create the file with these classes "
                "(python -m dataseg.text --classes ... --output FILE) or use another encoder."
            )
        return self.embeddings[[self.index[k] for k in keys]]
