"""Checkpoints that survive a kill mid-write and refuse weights that do not fit the model."""

import logging
import os
import pickle
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.atomic_file import atomic_write as _atomic_write
from ..utils.atomic_file import remove_stale_temporaries

__all__ = ["DaTaSegCheckpointer", "TEXT_INFO_KEY", "local_weights_file", "refused_global"]

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
    * With ``allow_partial=False`` (inference: the predictor, the demo, ``--eval-only``) a
      file that leaves any model tensor unfilled, gives one of another shape or holds tensors
      the model does not have fails with the keys and the config keys whose values differ
      between the model and the file (``NUM_QUERIES``, ``HIDDEN_DIM``, ...): a checkpoint of
      another architecture would otherwise be evaluated with random weights in its place.
      Training (fine-tuning from a backbone or another checkpoint) loads partial weights.

    Args: as :class:`detectron2.checkpoint.DetectionCheckpointer`, plus
        min_backbone_fraction: share of the trunk's parameters a loaded file must fill
            (``MODEL.DATASEG.MIN_LOADED_BACKBONE_FRACTION``; 0 disables the check).
        allow_partial: load files that fill only part of the model, with detectron2's load
            report (False at inference unless ``MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS``).
    """

    def __init__(self, model, save_dir: str = "", *, min_backbone_fraction: float = 0.5,
                 allow_partial: bool = True, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.min_backbone_fraction = float(min_backbone_fraction)
        self.allow_partial = bool(allow_partial)
        self._loading_file = None

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

    def remove_stale_temporary_files(self) -> List[str]:
        """Delete the temporary files that saves killed mid-write left in ``save_dir``.

        Only names :meth:`save` itself writes through (``.tmp-<name>.pth.<suffix>`` and
        ``.tmp-last_checkpoint.<suffix>``) are touched. Call it once when training starts, on
        the main process: a save in flight (another job writing into the same folder) would
        lose its temporary file. Returns the removed paths.
        """
        if not self.save_dir or not self._is_local() or not os.path.isdir(self.save_dir):
            return []
        removed = remove_stale_temporaries(self.save_dir, ("*.pth", "last_checkpoint"))
        if removed:
            self.logger.info(f"Removed {len(removed)} temporary file(s) of checkpoint saves "
                             f"that did not finish: {removed}")
        return removed

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

    def _torch_load(self, f: str):
        # Tensors, containers and numbers only, whatever torch's default: a crafted .pth
        # cannot run code (detectron2's .pkl files are plain pickles: docs/untrusted_files.md).
        return torch.load(f, map_location=torch.device("cpu"), weights_only=True)

    def _load_file(self, filename: str):
        self._loading_file = filename
        try:
            loaded = super()._load_file(filename)
        except pickle.UnpicklingError as e:
            refused = refused_global(e)
            if refused:
                raise ValueError(_not_a_checkpoint(filename, (
                    f"it pickles Python objects besides tensors ({refused}); .pth files are "
                    "read weights-only so that a file cannot run code. If you trust the file, "
                    "re-save its tensors: torch.save({'model': torch.load(path, "
                    "weights_only=False)['model']}, new_path)"))) from e
            raise ValueError(_not_a_checkpoint(filename, f"{type(e).__name__}: {e}")) from e
        except (KeyError, AttributeError, EOFError) as e:
            raise ValueError(_not_a_checkpoint(filename, f"{type(e).__name__}: {e}")) from e
        state = loaded.get("model") if isinstance(loaded, dict) else None
        if not isinstance(state, dict) or not any(
                isinstance(v, (torch.Tensor, np.ndarray)) for v in state.values()):
            raise ValueError(_not_a_checkpoint(filename, "it holds no tensors"))
        return loaded

    def _load_model(self, checkpoint: Any):
        self._check_text_dim(checkpoint)
        # detectron2 pops the state dict (and drops mis-shaped tensors from it): keep the
        # shapes to tell which config key differs.
        saved_shapes = {k[len("module."):] if k.startswith("module.") else k:
                        tuple(getattr(v, "shape", ())) for k, v in checkpoint["model"].items()}
        incompatible = super()._load_model(checkpoint)
        if not self.allow_partial:
            self._check_complete(incompatible, saved_shapes)
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

    def _check_complete(self, incompatible, saved_shapes: Dict[str, Tuple[int, ...]]) -> None:
        """Refuse weights that leave a model tensor unfilled or mis-shaped, or hold extra ones.

        Raises:
            ValueError: listing the keys, and the config keys whose values differ between
                the configured model and the file (read from both state dicts' shapes).
        """
        shapes = list(incompatible.incorrect_shapes)
        reshaped = [k for k, *_ in shapes]
        # detectron2 drops mis-shaped tensors before loading: they are reported missing too.
        missing = [k for k in incompatible.missing_keys if k not in reshaped]
        unexpected = list(incompatible.unexpected_keys)
        if not (missing or shapes or unexpected):
            return
        model = self.model.module if hasattr(self.model, "module") else self.model
        model_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        sizes = {k: int(np.prod(s)) for k, s in model_shapes.items()}
        not_loaded = set(missing) | set(reshaped)
        loaded = sum(n for k, n in sizes.items() if k not in not_loaded)
        problems = missing + reshaped + unexpected
        differing = _differing_config_keys(model_shapes, saved_shapes)
        if differing:
            suspects = "; ".join(f"{key} is {ours} in the config, {theirs} in the file"
                                 for key, ours, theirs in differing)
        else:
            suspects = ", ".join(sorted({_config_group(k) for k in problems}))

        def listing(keys, limit=8):
            keys = list(keys)
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        lines = []
        if missing:
            lines.append(f"missing from the file ({len(missing)}): {listing(missing)}")
        if shapes:
            lines.append(f"of another shape ({len(shapes)}): " + listing(
                (f"{k} {tuple(saved)} in the file, {tuple(ours)} in the model"
                 for k, saved, ours in shapes), limit=4))
        if unexpected:
            lines.append(f"in the file but not in the model ({len(unexpected)}): "
                         f"{listing(unexpected)}")
        name = self._loading_file or "MODEL.WEIGHTS"
        if not_loaded:
            effect = (f"only {100.0 * loaded / max(sum(sizes.values()), 1):.1f} % of its "
                      "parameters would be loaded, the rest would stay random")
        else:
            effect = ("they hold tensors the model lacks, so part of the trained network "
                      "would be left out")
        raise ValueError(
            f"The weights {name!r} do not fit the configured model: {effect}. Tensors "
            + "; ".join(lines) + ". The config most likely "
            f"differs from the one the file was trained with in: {suspects}. Use that config "
            "(train_net.py writes it to OUTPUT_DIR/config.yaml), or set "
            "MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS True to run with partial weights on "
            "purpose."
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


def refused_global(error: Exception) -> Optional[str]:
    """The Python object (``module.name``) a ``torch.load(weights_only=True)`` refused to
    unpickle, from its error; None for other errors (a truncated or foreign file)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return found.group(1) if found else None


def local_weights_file(weights: str) -> Optional[str]:
    """The local file a ``MODEL.WEIGHTS`` value names (its ``?query`` stripped), or None for a
    URL (``detectron2://``, ``https://``, ...) that only the checkpointer can resolve."""
    if not weights or "://" in weights:
        return None
    return weights.split("?", 1)[0]


def _dim(name: str, axis: int) -> Callable[[Dict[str, Tuple[int, ...]]], Optional[int]]:
    def read(shapes):
        shape = shapes.get(name)
        return int(shape[axis]) if shape is not None and len(shape) > axis else None
    return read


def _count(pattern: str) -> Callable[[Dict[str, Tuple[int, ...]]], Optional[int]]:
    regex = re.compile(pattern)

    def read(shapes):
        found = {m.group(1) for m in map(regex.match, shapes) if m}
        return len(found) or None
    return read


# Config keys that change the model's tensors, each read back from a state dict's shapes
# (parameter names of DaTaSeg's modules; None when the tensor is absent, e.g. a backbone-only
# file). Comparing the model's value with the file's names the key a mismatch comes from.
_ARCHITECTURE_KEYS = {
    "MODEL.DATASEG.DECODER.NUM_QUERIES": _dim("transformer_decoder.query_feat.weight", 0),
    "MODEL.DATASEG.DECODER.HIDDEN_DIM": _dim("transformer_decoder.query_feat.weight", 1),
    "MODEL.DATASEG.DECODER.DIM_FEEDFORWARD": _dim("transformer_decoder.ffn.0.linear1.weight", 0),
    "MODEL.DATASEG.DECODER.NUM_LAYERS": _count(r"transformer_decoder\.ffn\.(\d+)\."),
    "MODEL.DATASEG.DECODER.MASK_HEAD_LAYERS": _count(
        r"transformer_decoder\.mask_embed\.layers\.(\d+)\."),
    "MODEL.DATASEG.DECODER.CLASS_HEAD_LAYERS": _count(r"classifier\.class_head\.layers\.(\d+)\."),
    "MODEL.DATASEG.PIXEL_DECODER.CONVS_DIM": _dim("pixel_decoder.mask_features.weight", 1),
    "MODEL.DATASEG.PIXEL_DECODER.MASK_DIM": _dim("pixel_decoder.mask_features.weight", 0),
    "MODEL.DATASEG.PIXEL_DECODER.NUM_ENCODER_LAYERS": _count(
        r"pixel_decoder\.encoder\.layers\.(\d+)\."),
    "MODEL.DATASEG.PIXEL_DECODER.DIM_FEEDFORWARD": _dim(
        "pixel_decoder.encoder.layers.0.linear1.weight", 0),
    "MODEL.RESNETS.STEM_OUT_CHANNELS": _dim("backbone.stem.conv1.weight", 0),
    "MODEL.VIT.EMBED_DIM": _dim("backbone.net.patch_embed.proj.weight", 0),
    "MODEL.VIT.DEPTH": _count(r"backbone\.net\.blocks\.(\d+)\."),
}

# Where to look when no key of _ARCHITECTURE_KEYS differs: the config group of a prefix.
_CONFIG_GROUPS = (
    ("backbone.", "the backbone (MODEL.BACKBONE.NAME, MODEL.RESNETS.*, MODEL.VIT.*)"),
    ("pixel_decoder.", "MODEL.DATASEG.PIXEL_DECODER.*"),
    ("transformer_decoder.", "MODEL.DATASEG.DECODER.*"),
    ("classifier.", "MODEL.DATASEG.DECODER.CLASS_HEAD_LAYERS / MODEL.DATASEG.CLASSIFIER.*"),
)


def _differing_config_keys(model_shapes, saved_shapes) -> List[Tuple[str, int, int]]:
    """(config key, model's value, file's value) of every architecture key that differs."""
    out = []
    for key, read in _ARCHITECTURE_KEYS.items():
        ours, theirs = read(model_shapes), read(saved_shapes)
        if ours is not None and theirs is not None and ours != theirs:
            out.append((key, ours, theirs))
    return out


def _config_group(param: str) -> str:
    return next((group for prefix, group in _CONFIG_GROUPS if param.startswith(prefix)),
                "the model's config")


def _not_a_checkpoint(filename: str, why: str) -> str:
    return (
        f"MODEL.WEIGHTS {filename!r} is not a checkpoint DaTaSeg can read ({why}). Expected a "
        "DaTaSeg / detectron2 checkpoint (.pth), a detectron2 model-zoo file (.pkl), or "
        "weights converted with `python -m dataseg.tools.convert_weights`."
    )
