"""On-disk cache of vocabulary text embeddings.

Embedding a vocabulary means loading a text model (seconds to a minute for CLIP ViT-L/14) and
running thousands of prompts; the result depends only on the encoder and its weights, the
templates and the exact class list. Those form the key; the value is the per-synonym embedding
matrix. Entries are written to a temporary file in the same folder and moved into place with
``os.replace``, which is atomic on POSIX and Windows, so concurrent writers (several ranks, two
jobs sharing a home folder) each leave a complete file and readers never see a partial one.
Each entry stores the sha256 of its contents: a file damaged on disk (a flipped bit inside a
tensor still unpickles) is detected at load and recomputed instead of serving a wrong
embedding to every later run.
"""

import hashlib
import json
import logging
import os
import re
from typing import Optional, Sequence, Tuple

import torch

from ..utils.atomic_file import atomic_write

__all__ = ["EmbeddingCache", "default_cache_dir", "resolve_cache_dir"]

logger = logging.getLogger(__name__)

_FORMAT = 1


def default_cache_dir() -> str:
    """``$DATASEG_CACHE/text_embeddings`` if DATASEG_CACHE is set, else
    ``~/.cache/dataseg/text_embeddings``."""
    root = os.environ.get("DATASEG_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "dataseg"
    )
    return os.path.join(root, "text_embeddings")


def resolve_cache_dir(cache_dir: Optional[str]) -> str:
    """``MODEL.DATASEG.TEXT.CACHE_DIR`` when set, else :func:`default_cache_dir`."""
    return os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()


class EmbeddingCache:
    """A folder of ``.pt`` files, one per (encoder, templates, class list).

    Args:
        directory: the folder; created on first write.
    """

    def __init__(self, directory: str):
        self.directory = directory

    @staticmethod
    def make_key(
        encoder_identity: str, templates: Sequence[str], class_names: Sequence[str]
    ) -> dict:
        """Everything the embeddings depend on. Synonym reduction is NOT part of it: the cache
        keeps per-synonym rows and reduction happens after loading."""
        return {
            "format": _FORMAT,
            "encoder": encoder_identity,
            "templates": list(templates),
            "class_names": list(class_names),
        }

    def path_for(self, key: dict) -> str:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:24]
        # Readable prefix so users can tell entries of different encoders apart.
        slug = re.sub(r"[^A-Za-z0-9]+", "-", key["encoder"]).strip("-")[:48]
        return os.path.join(self.directory, f"{slug}-{len(key['class_names'])}cls-{digest}.pt")

    def load(self, key: dict) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``(embeddings (N, D), class_index (N,))`` on a hit, None on a miss.

        An unreadable, inconsistent or damaged file (its sha256 does not match), or one written
        without a checksum by an older version, counts as a miss (with a warning naming it);
        the caller then recomputes and overwrites it.
        """
        path = self.path_for(key)
        if not os.path.isfile(path):
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        # Any failure to read a cache entry (truncated zip, foreign bytes, unpickling errors:
        # torch.load raises many types) must degrade to recomputing, never stop training.
        except Exception as e:  # noqa: BLE001
            logger.warning(f"Text-embedding cache file {path} is unreadable ({e!r}); recomputing.")
            return None
        problem = self._check(data, key)
        if problem:
            logger.warning(f"Text-embedding cache file {path} is invalid ({problem}); recomputing.")
            return None
        return data["embeddings"].float(), data["class_index"].long()

    @staticmethod
    def _check(data, key) -> str:
        if not isinstance(data, dict) or not {"key", "embeddings", "class_index"} <= set(data):
            return "missing fields"
        if data["key"] != key:
            return "its key differs from the requested one"
        emb, idx = data["embeddings"], data["class_index"]
        if not (isinstance(emb, torch.Tensor) and isinstance(idx, torch.Tensor)):
            return "fields are not tensors"
        if emb.dtype != torch.float32 or idx.dtype != torch.int64:
            return f"unexpected dtypes {emb.dtype} / {idx.dtype}"
        if "sha256" not in data:
            return "it has no checksum: written by an older version of DaTaSeg"
        if data["sha256"] != _checksum(key, emb, idx):
            return "its contents do not match their sha256: the file is damaged"
        if emb.ndim != 2 or idx.shape != (emb.shape[0],):
            return f"bad shapes {tuple(emb.shape)} / {tuple(idx.shape)}"
        if emb.shape[0] == 0 or int(idx.max()) != len(key["class_names"]) - 1:
            return "rows do not cover the class list"
        if not torch.isfinite(emb).all():
            return "non-finite values"
        return ""

    def save(self, key: dict, embeddings: torch.Tensor, class_index: torch.Tensor) -> str:
        """Write an entry atomically; returns its path. Failures only warn (the cache is an
        optimisation; a read-only home folder must not stop a run)."""
        path = self.path_for(key)
        embeddings = embeddings.detach().float().cpu().contiguous()
        class_index = class_index.detach().long().cpu().contiguous()
        payload = {
            "key": key,
            "embeddings": embeddings,
            "class_index": class_index,
            "sha256": _checksum(key, embeddings, class_index),
        }
        try:
            os.makedirs(self.directory, exist_ok=True)
            atomic_write(path, lambda f: torch.save(payload, f))
        except OSError as e:
            logger.warning(f"Could not write text-embedding cache file {path}: {e!r}")
        return path


def _checksum(key: dict, embeddings: torch.Tensor, class_index: torch.Tensor) -> str:
    """sha256 (hex) of an entry: its key, the tensors' dtypes and shapes, and their bytes."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8"))
    for tensor in (embeddings, class_index):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode("utf-8"))
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
