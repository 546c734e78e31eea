"""Checkpoints that survive a kill mid-write and refuse a model with another text width."""

import logging
import os
from typing import Any, Dict, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_file import atomic_write as _atomic_write

__all__ = ["DaTaSegCheckpointer", "TEXT_INFO_KEY"]

logger = logging.getLogger(__name__)

# Extra entry of every DaTaSeg checkpoint: the text encoder the classifier was trained against.
TEXT_INFO_KEY = "dataseg_text"
# The classifier parameter whose width is the text dimension (independent of the head depth).
_TEXT_DIM_PARAM = "classifier.background_embedding"


class DaTaSegCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves and a text-dimension check on load.

    * ``save`` writes ``<name>.pth`` and ``last_checkpoint`` through a temporary file and an
      atomic rename: a job killed while saving leaves the previous checkpoint and the
      ``last_checkpoint`` pointer intact, so ``--resume`` always finds a loadable file.
    * Every checkpoint records the text encoder (identity and width) of the classifier under
      :data:`TEXT_INFO_KEY`. Text embeddings themselves are never saved, so a checkpoint loads
      into a model configured with other datasets or vocabularies; but a checkpoint trained
      against text embeddings of another width cannot, and detectron2 would only skip the
      mismatched classifier weights with a warning. Loading then raises a ``ValueError`` naming
      both widths and encoders.

    Args: as :class:`detectron2.checkpoint.DetectionCheckpointer`.
    """

    # ---- saving -------------------------------------------------------------------------
    def _is_local(self) -> bool:
        return "://" not in self.save_dir

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if not self._is_local():
            # Remote storage (PathManager handlers): no local rename to rely on.
            return super().save(name, **kwargs)
        os.makedirs(self.save_dir, exist_ok=True)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        text_info = self.model_text_info()
        if text_info is not None:
            data[TEXT_INFO_KEY] = text_info
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._is_local():
            return super().tag_last_checkpoint(last_filename_basename)
        _atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                      lambda f: f.write(last_filename_basename.encode()))

    # ---- loading ------------------------------------------------------------------------
    def model_text_info(self) -> Optional[Dict[str, Any]]:
        """``{"encoder": identity, "dim": width}`` of the model's text classifier, or None."""
        classifier = getattr(self.model, "classifier", None)
        dim = getattr(classifier, "text_dim", None)
        if dim is None:
            return None
        provider = getattr(classifier, "embedding_provider", None)
        info = getattr(provider, "info", None)
        return {"encoder": getattr(info, "identity", "unknown"), "dim": int(dim)}

    def _load_model(self, checkpoint: Any):
        self._check_text_dim(checkpoint)
        return super()._load_model(checkpoint)

    def _check_text_dim(self, checkpoint: Dict[str, Any]) -> None:
        expected = self.model_text_info()
        if expected is None or not isinstance(checkpoint.get("model"), dict):
            return
        state = checkpoint["model"]
        saved = checkpoint.get(TEXT_INFO_KEY) or {}
        weight = state.get(_TEXT_DIM_PARAM, state.get("module." + _TEXT_DIM_PARAM))
        # The stored width wins; the parameter's shape covers checkpoints without the extra.
        dim = saved.get("dim", None)
        if dim is None and weight is not None and hasattr(weight, "shape"):
            dim = int(weight.shape[-1])
        if dim is None:
            return  # not a DaTaSeg classifier checkpoint (e.g. ImageNet backbone weights)
        encoder = saved.get("encoder", "unknown (checkpoint predates this record)")
        if int(dim) != expected["dim"]:
            raise ValueError(
                f"Checkpoint text dimension {dim} (text encoder {encoder}) does not match the "
                f"configured text encoder {expected['encoder']} (dimension {expected['dim']}). "
                "The classifier's projection was trained for the checkpoint's text space: set "
                "MODEL.DATASEG.TEXT.* to the encoder it was trained with, or, to fine-tune "
                "into another text space on purpose, drop the 'classifier.*' weights from the "
                "checkpoint first."
            )
        if saved.get("encoder") and saved["encoder"] != expected["encoder"]:
            logger.warning(
                f"Checkpoint was trained with text encoder {saved['encoder']}, the model is "
                f"configured with {expected['encoder']} (same width {dim}); class predictions "
                "will be meaningless until the classifier is fine-tuned."
            )
