"""Checkpoints that survive a kill mid-write and refuse a model with another text width."""

import logging
import os
import pickle
from typing import Any, Dict, Optional

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_file import atomic_write as _atomic_write

__all__ = ["DaTaSegCheckpointer", "TEXT_INFO_KEY", "local_weights_file"]

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

    * After loading, it logs which share of the backbone's pretrainable trunk (the ResNet, or
      the ViT under ViTDet's pyramid) and of the whole model the file filled, and fails when
      less than ``min_backbone_fraction`` of the trunk was loaded: a torchvision state dict,
      or a checkpoint of another backbone, would otherwise train from random weights with a
      few warnings. A file that is not a checkpoint at all fails with a message too.

    Args: as :class:`detectron2.checkpoint.DetectionCheckpointer`, plus
        min_backbone_fraction: share of the trunk's parameters a loaded file must fill
            (``MODEL.DATASEG.MIN_LOADED_BACKBONE_FRACTION``; 0 disables the check).
    """

    def __init__(self, model, save_dir: str = "", *, min_backbone_fraction: float = 0.5,
                 **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.min_backbone_fraction = float(min_backbone_fraction)

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

    def _load_file(self, filename: str):
        try:
            loaded = super()._load_file(filename)
        except (KeyError, AttributeError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(_not_a_checkpoint(filename, f"{type(e).__name__}: {e}")) from e
        state = loaded.get("model") if isinstance(loaded, dict) else None
        if not isinstance(state, dict) or not any(
                isinstance(v, (torch.Tensor, np.ndarray)) for v in state.values()):
            raise ValueError(_not_a_checkpoint(filename, "it holds no tensors"))
        return loaded

    def _load_model(self, checkpoint: Any):
        self._check_text_dim(checkpoint)
        _upgrade_class_head_keys(checkpoint["model"])
        incompatible = super()._load_model(checkpoint)
        self._check_coverage(incompatible)
        missing = [k for k in incompatible.missing_keys if k.startswith("classifier.")]
        if missing and TEXT_INFO_KEY in checkpoint:
            logger.warning(
                f"This DaTaSeg checkpoint does not fill the text classifier's {missing}: "
                "they keep their random initialisation, so class predictions are meaningless "
                "until they are trained. Was it saved with another "
                "MODEL.DATASEG.DECODER.CLASS_HEAD_LAYERS?")
        return incompatible

    def _check_coverage(self, incompatible) -> None:
        """Log (and check) how much of the backbone trunk and of the model was loaded."""
        model = self.model.module if hasattr(self.model, "module") else self.model
        sizes = {k: v.numel() for k, v in model.state_dict().items()}
        not_loaded = set(incompatible.missing_keys) | {k for k, *_ in incompatible.incorrect_shapes}
        backbone = getattr(model, "backbone", None)
        trunk = "backbone.net." if hasattr(backbone, "net") else "backbone."

        def share(prefix):
            keys = [k for k in sizes if k.startswith(prefix)]
            total = sum(sizes[k] for k in keys)
            loaded = sum(sizes[k] for k in keys if k not in not_loaded)
            return loaded, total

        t_loaded, t_total = share(trunk)
        m_loaded, m_total = share("")
        if t_total:
            logger.info(
                f"Loaded {100.0 * t_loaded / t_total:.1f} % of the backbone trunk ({trunk}*) "
                f"and {100.0 * m_loaded / max(m_total, 1):.1f} % of the model's parameters.")
        if t_total and t_loaded < self.min_backbone_fraction * t_total:
            raise ValueError(
                f"The weights filled only {100.0 * t_loaded / t_total:.1f} % of the backbone "
                f"({trunk}*; {len([k for k in not_loaded if k.startswith(trunk)])} tensors "
                "missing or of another shape): the file is not a checkpoint of this backbone. "
                "Convert torchvision / timm ResNet or MAE ViT weights with `python -m "
                "dataseg.tools.convert_weights`, check that the config's backbone matches the "
                "checkpoint, or train from scratch with MODEL.WEIGHTS \"\". (Set "
                "MODEL.DATASEG.MIN_LOADED_BACKBONE_FRACTION 0 to load partial weights on purpose.)"
            )

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


def local_weights_file(weights: str) -> Optional[str]:
    """The local file a ``MODEL.WEIGHTS`` value names (its ``?query`` stripped), or None for a
    URL (``detectron2://``, ``https://``, ...) that only the checkpointer can resolve."""
    if not weights or "://" in weights:
        return None
    return weights.split("?", 1)[0]


def _upgrade_class_head_keys(state: Dict[str, Any]) -> None:
    """Rename the class-head keys of checkpoints saved before the head became an ``MLP``.

    ``classifier.class_head.weight`` (one linear layer) and ``classifier.class_head.{2i}.*``
    (``nn.Sequential`` of linear + ReLU) are now ``classifier.class_head.layers.{i}.*``;
    without the rename they would be dropped as unexpected keys, silently.
    """
    prefix = "classifier.class_head."
    for key in [k for k in state if k.startswith(prefix) and not k.startswith(prefix + "layers.")]:
        rest = key[len(prefix):]
        index, _, name = rest.rpartition(".")
        if index == "":
            layer = 0
        elif index.isdigit() and int(index) % 2 == 0:
            layer = int(index) // 2
        else:
            continue
        state[f"{prefix}layers.{layer}.{name}"] = state.pop(key)


def _not_a_checkpoint(filename: str, why: str) -> str:
    return (
        f"MODEL.WEIGHTS {filename!r} is not a checkpoint DaTaSeg can read ({why}). Expected a "
        "DaTaSeg / detectron2 checkpoint (.pth), a detectron2 model-zoo file (.pkl), or "
        "weights converted with `python -m dataseg.tools.convert_weights`."
    )
