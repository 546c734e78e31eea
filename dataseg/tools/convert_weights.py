"""Convert the pretrained checkpoints users have into files ``MODEL.WEIGHTS`` loads.

    python -m dataseg.tools.convert_weights --format torchvision-resnet resnet50.pth R-50.pkl
    python -m dataseg.tools.convert_weights --format timm-resnet resnet50_a1.pth R-50.pkl
    python -m dataseg.tools.convert_weights --format mae-vit mae_pretrain_vit_base.pth vit.pkl

Formats:

* ``torchvision-resnet`` / ``timm-resnet``: ``torchvision.models.resnet*`` and timm's ResNets
  share one naming (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0`` ...); it is
  renamed to detectron2's ResNet (``stem.conv1``, ``res2.0.conv1.norm``, ``shortcut`` ...),
  the classifier (``fc``) dropped. The result is what detectron2's own
  ``ImageNetPretrained/torchvision/R-50.pkl`` holds: use it with ``RESNETS.STRIDE_IN_1X1
  False`` and RGB pixel statistics, as ``configs/Base-DaTaSeg.yaml`` does.
* ``mae-vit``: an MAE (or timm ``VisionTransformer``) encoder checkpoint for ViTDet: the
  decoder, mask token, class token and final norm (unused by ViTDet) are dropped, and the
  names are put under ``net.`` (detectron2's ``ViT`` sits at ``backbone.net``).

The output is a detectron2-style ``.pkl`` (``{"model": numpy arrays, "__author__": ...,
"matching_heuristics": True}``); loading it reports the share of the backbone it filled and
fails when that share is too small (``MODEL.DATASEG.MIN_LOADED_BACKBONE_FRACTION``).

The input is read with ``torch.load(weights_only=True)``: tensors, containers and numbers
only, so a crafted file cannot run code. A checkpoint that also pickles other Python objects
(an ``argparse.Namespace`` of training arguments, ...) is refused with the object named;
``--trust-pickle`` reads it fully, which runs whatever code the file names: only for files
from a source you trust (docs/untrusted_files.md).
"""

import argparse
import pickle
import re
import sys
from typing import Dict

import torch

from ..engine.checkpoint import refused_global

__all__ = ["FORMATS", "convert_state_dict", "load_state_dict", "main"]


def _resnet(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        k = re.sub(r"^conv1\.", "stem.conv1.", key)
        k = re.sub(r"^bn1\.", "stem.conv1.norm.", k)
        k = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", k)
        k = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", k)
        k = k.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        if k == key:
            raise ValueError(
                f"Unexpected key {key!r} for a torchvision/timm ResNet state dict; is it "
                "another architecture? (keys start with conv1, bn1, layer1..layer4, fc)")
        out[k] = value
    return out


def _mae_vit(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        # ViTDet uses neither the class token (only its position embedding) nor the final
        # norm; MAE's decoder and mask token are pretraining-only.
        if key.startswith(("decoder", "mask_token", "head.", "fc_norm.", "norm.", "cls_token")):
            continue
        out["net." + key] = value  # under SimpleFeaturePyramid.net: unique name matches
    if "net.patch_embed.proj.weight" not in out:
        raise ValueError("Not a ViT encoder state dict: no 'patch_embed.proj.weight'.")
    return out


FORMATS = {"torchvision-resnet": _resnet, "timm-resnet": _resnet, "mae-vit": _mae_vit}


def load_state_dict(path: str, trust_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (a bare state dict or under "model"/"state_dict").

    Args:
        path: a ``torch.save`` file.
        trust_pickle: unpickle everything the file holds (``weights_only=False``). Unpickling
            can run arbitrary code: only for files from a trusted source.

    Raises:
        ValueError: the file holds objects other than tensors, containers and numbers (and
            ``trust_pickle`` is False), or no state dict.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if trust_pickle:
            raise
        raise ValueError(
            f"{path!r} holds Python objects besides tensors ({refused_global(e) or e}); "
            "reading them would run code the file names, so it was not unpickled. If the file "
            "comes from a source you trust (e.g. the model's official release), pass "
            "--trust-pickle; otherwise load it in a sandbox and re-save only its state dict "
            "(torch.save(state_dict, path)).") from e
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path!r} holds no state dict.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()
            if isinstance(v, torch.Tensor)}


def convert_state_dict(state: Dict[str, torch.Tensor], fmt: str) -> Dict:
    """The detectron2-style checkpoint dict of ``state`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format {fmt!r}; choose one of {sorted(FORMATS)}.")
    converted = FORMATS[fmt](state)
    return {"model": {k: v.detach().cpu().numpy() for k, v in converted.items()},
            "__author__": f"dataseg.tools.convert_weights ({fmt})", "matching_heuristics": True}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("input", help="checkpoint file (.pth / .pt / .bin)")
    parser.add_argument("output", help="output .pkl, for MODEL.WEIGHTS")
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="read the input with torch.load(weights_only=False): needed for legacy "
             "checkpoints that also pickle other Python objects (training arguments, ...), "
             "which the default weights-only read refuses. Unpickling runs any code the file "
             "names: use it only for files from a source you trust")
    args = parser.parse_args(argv)
    if not args.output.endswith(".pkl"):
        parser.error("the output must end in .pkl (detectron2 reads its format from the name)")
    try:
        state = load_state_dict(args.input, trust_pickle=args.trust_pickle)
    except ValueError as e:
        raise SystemExit(f"convert_weights: {e}") from e
    data = convert_state_dict(state, args.format)
    with open(args.output, "wb") as f:
        pickle.dump(data, f)
    print(f"Wrote {len(data['model'])} tensors to {args.output}; use MODEL.WEIGHTS {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
