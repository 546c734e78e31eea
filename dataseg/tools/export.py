"""Export DaTaSeg's network to ONNX and serve it with onnxruntime (docs/deploy.md).

    python -m dataseg.tools.export --config-file configs/tiny/DaTaSeg-tiny.yaml \\
        --output dataseg.onnx [--verify] [MODEL.WEIGHTS model_final.pth ...]

The file holds the NETWORK: backbone, pixel decoder, query decoder and the text classifier's
cosine head, with the class embeddings as an INPUT, so one file scores any vocabulary.

* inputs: ``image`` (1, 3, H, W) float32, raw pixel values in ``INPUT.FORMAT`` order, resized
  as the predictor resizes and padded at the bottom / right to a multiple of the size
  divisibility with ``MODEL.PIXEL_MEAN`` (the graph normalises with the pixel mean and std,
  so the padding becomes the model's zeros); ``text_embeddings`` (K, D) float32, the
  classifier's normalised rows (one per class, or one per synonym under the "max" synonym
  reduction), any K >= 1;
* outputs: ``class_logits`` (Q, K+1), background last, and ``mask_logits`` (Q, H/4, W/4);
* H, W and K are dynamic. Exporter: ``torch.onnx.export(dynamo=True)`` (``torch.export``
  traced graph translated by onnxscript), opset :data:`DEFAULT_OPSET`.

The exported computations are the plain ones (``fast_paths.plain_computations``): per-level
``grid_sample`` deformable attention, per-head attention masks
and 1x1 convolutions as convolutions, never the CPU fast paths of the eager model.
Architecture keys, the text width, the padding, the exporter and the opset are stored in the
file's ``metadata_props``; :class:`OnnxPredictor` refuses a file that does not match its
config. It runs the graph with onnxruntime and the project's own post-processing
(``dataseg.modeling.postprocessing.image_outputs``), and returns what
``dataseg.engine.DaTaSegPredictor`` returns.
"""

import argparse
import copy
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..engine.predictor import (
    PREDICTOR_VOCABULARY,
    adopt_vocabulary,
    build_inference_model,
    resize_for_network,
    resolve_vocabulary,
)
from ..modeling.meta_arch import inference_settings
from ..modeling.fast_paths import plain_computations
from ..modeling.postprocessing import image_outputs
from ..modeling.text_classifier import vocabulary_weights
from ..text import build_text_embedding_provider, reduce_synonym_scores
from ..utils.atomic_file import atomic_write

__all__ = [
    "DEFAULT_OPSET",
    "ExportableNetwork",
    "OnnxPredictor",
    "check_onnx_metadata",
    "compare_with_pytorch",
    "export_onnx",
    "main",
    "onnx_session",
]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 20
EXPORTER = "torch.onnx.export(dynamo=True)"
INPUT_NAMES = ("image", "text_embeddings")
OUTPUT_NAMES = ("class_logits", "mask_logits")
# Config keys the graph is built from: a file used with another value would be wrong.
ARCHITECTURE_KEYS = (
    "MODEL.DATASEG.DECODER.NUM_QUERIES",
    "MODEL.DATASEG.DECODER.HIDDEN_DIM",
    "MODEL.DATASEG.SIZE_DIVISIBILITY",
    "MODEL.DATASEG.PIXEL_DECODER.COMMON_STRIDE",
    "INPUT.FORMAT",
    "MODEL.PIXEL_MEAN",
    "MODEL.PIXEL_STD",
)
_META = "dataseg."  # prefix of the metadata_props keys
_DEPLOY_HINT = "pip install dataseg[deploy]"


def _import(name: str, purpose: str):
    try:
        return __import__(name)
    except ImportError as e:
        raise ImportError(
            f"{purpose} needs the Python package {name!r}, which is not installed: "
            f"{_DEPLOY_HINT} (onnx, onnxscript, onnxruntime) installs it.") from e


def _cfg_value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else node


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b)))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


# ---- the exported network ------------------------------------------------------------------


class ExportableNetwork(nn.Module):
    """DaTaSeg's network as the ONNX graph computes it, for ONE padded image.

    ``(image (1, 3, H, W) raw pixels padded with the pixel mean, text_embeddings (K, D))
    -> (class_logits (Q, K+1), mask_logits (Q, H/4, W/4))``: the model's normalisation,
    :meth:`DaTaSeg.predict` and the classifier's :meth:`score` against the given rows, the
    last decoder layer's outputs, exactly as ``DaTaSeg.forward`` computes them at inference.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, text_embeddings: torch.Tensor):
        model = self.model
        # Padding with the mean normalises to exactly 0, the model's own padding value.
        x = (image - model.pixel_mean) / model.pixel_std
        last = model.predict(x)[-1]
        class_logits = model.classifier.score(last["query_features"], text_embeddings)
        return class_logits[0], last["pred_masks"][0]


def _padding(model) -> Tuple[int, int]:
    """(size divisibility, square size or 0) as ``ImageList.from_tensors`` pads for ``model``."""
    divisibility = int(model.size_divisibility)
    constraints = getattr(model.backbone, "padding_constraints", None) or {}
    divisibility = int(constraints.get("size_divisibility", divisibility))
    return divisibility, int(constraints.get("square_size", 0) or 0)


def _metadata(cfg, model, opset: int) -> Dict[str, str]:
    divisibility, square = _padding(model)
    meta = {
        "config": json.dumps({k: _cfg_value(cfg, k) for k in ARCHITECTURE_KEYS}),
        "text_dim": str(int(model.classifier.text_dim)),
        "text_encoder": str(cfg.MODEL.DATASEG.TEXT.ENCODER),
        "size_divisibility": str(divisibility),
        "square_size": str(square),
        "mask_stride": str(int(cfg.MODEL.DATASEG.PIXEL_DECODER.COMMON_STRIDE)),
        "exporter": f"{EXPORTER}, torch {torch.__version__}",
        "opset": str(int(opset)),
        "inputs": "image (1, 3, H, W) float32 raw pixels in INPUT.FORMAT, padded to the size "
                  "divisibility with MODEL.PIXEL_MEAN; text_embeddings (K, D) float32",
        "outputs": "class_logits (Q, K+1), background last; mask_logits (Q, H/stride, "
                   "W/stride)",
    }
    return {_META + k: v for k, v in meta.items()}


def _check_model_matches(cfg, model) -> None:
    found = {
        "MODEL.DATASEG.DECODER.NUM_QUERIES": model.transformer_decoder.num_queries,
        "MODEL.DATASEG.DECODER.HIDDEN_DIM": model.classifier.hidden_dim,
        "MODEL.PIXEL_MEAN": model.pixel_mean.flatten().tolist(),
        "MODEL.PIXEL_STD": model.pixel_std.flatten().tolist(),
    }
    # Compared in float32, the buffers' precision.
    wrong = [f"{k}: config {_cfg_value(cfg, k)}, model {v}" for k, v in found.items()
             if not np.array_equal(np.float32(v), np.float32(_cfg_value(cfg, k)))]
    if wrong:
        raise ValueError(
            "The model given to export_onnx was not built from this config ("
            + "; ".join(wrong) + "): the file would record the wrong architecture. Pass the "
            "config the model was built from.")


def export_onnx(cfg, output_path: str, model: Optional[nn.Module] = None,
                opset: Optional[int] = None) -> str:
    """Write the network of ``cfg`` as an ONNX file (see the module docstring).

    Args:
        cfg: DaTaSeg config.
        output_path: the .onnx file to write (replaced atomically; its folder is created).
        model: a built DaTaSeg model to export (any device; it is left as it was). None
            builds the model of ``cfg`` and loads ``MODEL.WEIGHTS`` as the predictor does
            (:func:`dataseg.engine.predictor.build_inference_model`: partial weights refused
            unless ``MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS``).
        opset: ONNX opset (default :data:`DEFAULT_OPSET`).

    Returns:
        ``output_path``.
    """
    _import("onnx", "ONNX export")
    _import("onnxscript", "ONNX export (torch.onnx's exporter)")
    opset = int(opset or DEFAULT_OPSET)
    if model is None:
        model = build_inference_model(cfg)
    if not hasattr(model, "predict") or not hasattr(getattr(model, "classifier", None), "score"):
        raise TypeError(f"export_onnx exports DaTaSeg models, got {type(model).__name__}.")
    _check_model_matches(cfg, model)
    if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
        raise ValueError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: the export takes RGB or BGR "
                         "images.")
    was_training = model.training
    # The graph is device-free; tracing on CPU keeps CUDA-only choices out of it. The copy
    # shares the text side (a loaded text encoder is not part of the network).
    provider = getattr(model.classifier, "embedding_provider", None)
    cpu_model = model if model.device.type == "cpu" else \
        copy.deepcopy(model, memo={id(provider): provider}).cpu()
    network = ExportableNetwork(cpu_model).eval()
    divisibility, square = _padding(cpu_model)
    generator = torch.Generator().manual_seed(0)
    if square:
        size = (square, square)
        image_dims = {}
    else:
        size = (2 * divisibility, 3 * divisibility)
        # Sizes are whole multiples of the divisibility: the graph's input is padded.
        image_dims = {2: divisibility * torch.export.Dim("height_blocks", min=1, max=4096),
                      3: divisibility * torch.export.Dim("width_blocks", min=1, max=4096)}
    image = torch.rand((1, 3) + size, generator=generator) * 255
    text_dim = int(cpu_model.classifier.text_dim)
    embeddings = torch.nn.functional.normalize(
        torch.randn(3, text_dim, generator=generator), dim=-1)
    dynamic_shapes = {"image": image_dims,
                      "text_embeddings": {0: torch.export.Dim("num_classes", min=1,
                                                              max=1 << 20)}}
    start = time.perf_counter()
    try:
        with plain_computations(cpu_model), torch.no_grad():
            program = torch.onnx.export(
                network, (image, embeddings), None, input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES), opset_version=opset, dynamo=True,
                dynamic_shapes=dynamic_shapes, verbose=False)
    finally:
        model.train(was_training)
    program.model.metadata_props.update(_metadata(cfg, cpu_model, opset))
    proto = program.model_proto
    folder = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(folder, exist_ok=True)
    atomic_write(output_path, lambda f: f.write(proto.SerializeToString()))
    logger.info(f"Exported {output_path} ({os.path.getsize(output_path) / 2**20:.1f} MiB, "
                f"opset {opset}, {EXPORTER}) in {time.perf_counter() - start:.1f} s.")
    return output_path


# ---- serving ---------------------------------------------------------------------------------


def check_onnx_metadata(metadata: Dict[str, str], cfg, path: str = "the ONNX file",
                        text_dim: Optional[int] = None) -> None:
    """Refuse an exported file that does not fit ``cfg`` (and text embeddings of width
    ``text_dim``), naming every differing key.

    Args:
        metadata: the file's ``metadata_props`` (onnxruntime: ``custom_metadata_map``).
    Raises:
        ValueError: the file was not written by :func:`export_onnx`, or it was exported
            from another architecture / input format / text width.
    """
    if _META + "config" not in metadata:
        raise ValueError(
            f"{path} was not written by dataseg.tools.export (its metadata has no "
            f"'{_META}config'): export the model with `python -m dataseg.tools.export "
            "--config-file CONFIG --output FILE`.")
    recorded = json.loads(metadata[_META + "config"])
    wrong = [f"{k} is {recorded[k]!r} in the file and {_cfg_value(cfg, k)!r} in the config"
             for k in ARCHITECTURE_KEYS if k in recorded
             and not _same(recorded[k], _cfg_value(cfg, k))]
    if wrong:
        raise ValueError(
            f"{path} was exported from another config: " + "; ".join(wrong) + ". Use the "
            "config it was exported from, or export this config and its weights again "
            "(python -m dataseg.tools.export --config-file CONFIG --output FILE "
            "MODEL.WEIGHTS WEIGHTS).")
    file_dim = int(metadata[_META + "text_dim"])
    if text_dim is not None and int(text_dim) != file_dim:
        raise ValueError(
            f"{path} takes text embeddings of width {file_dim} (exported with the "
            f"{metadata.get(_META + 'text_encoder', '?')!r} text encoder), but the config's "
            f"text encoder MODEL.DATASEG.TEXT.ENCODER={cfg.MODEL.DATASEG.TEXT.ENCODER!r} gives "
            f"width {int(text_dim)}. Configure the text encoder the network was trained with "
            "(MODEL.DATASEG.TEXT.*), or a precomputed file of its embeddings.")


def onnx_session(onnx_path: str, providers=None, session_options=None):
    """An onnxruntime ``InferenceSession`` of ``onnx_path`` (default: CPU provider, as many
    intra-op threads as ``torch.get_num_threads()``, no spinning between runs); clear errors
    for a missing onnxruntime or file."""
    ort = _import("onnxruntime", "Running an exported DaTaSeg (OnnxPredictor)")
    if not os.path.isfile(onnx_path):
        raise FileNotFoundError(
            f"ONNX file {onnx_path!r} does not exist; write one with `python -m "
            "dataseg.tools.export --config-file CONFIG --output FILE`.")
    if session_options is None:
        # As many threads as torch uses (OMP_NUM_THREADS / torch.set_num_threads), instead
        # of onnxruntime's one per core, and no spinning between runs: the post-processing
        # that follows each run needs the same cores.
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = torch.get_num_threads()
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_path, sess_options=session_options,
                                providers=list(providers or ["CPUExecutionProvider"]))


class OnnxPredictor:
    """``DaTaSegPredictor``'s call on an exported network run by onnxruntime.

    Same arguments, vocabulary rules, test resize, 16-bit handling and outputs as
    :class:`dataseg.engine.DaTaSegPredictor`; the network runs in onnxruntime and its logits
    go through the project's post-processing (``postprocessing.image_outputs``), with the
    thresholds of ``cfg``. The class embeddings come from the config's text side
    (``MODEL.DATASEG.TEXT.*``: an encoder through the embedding cache, or the
    ``Precomputed`` encoder reading a file), once per :meth:`set_vocabulary`.

    Args:
        onnx_path: a file written by :func:`export_onnx`.
        cfg: the config it was exported from (its weights are in the file).
        vocabulary, classes, task, isthing: as ``DaTaSegPredictor``'s.
        providers: onnxruntime execution providers, e.g. ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]``; default CPU.
        session_options: an ``onnxruntime.SessionOptions``; default: as many intra-op
            threads as ``torch.get_num_threads()``, no spinning between runs.

    Raises:
        ImportError: onnxruntime is not installed.
        FileNotFoundError: no such file.
        ValueError: the file was exported from another config or text width.
    """

    def __init__(self, onnx_path: str, cfg, vocabulary: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None,
                 task: Union[str, Sequence[str], None] = None,
                 isthing: Optional[Sequence[bool]] = None, providers=None,
                 session_options=None):
        self.cfg = cfg.clone()
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"OnnxPredictor takes BGR images and converts them to INPUT.FORMAT; it "
                f"supports RGB and BGR, not {self.input_format!r}.")
        self.onnx_path = onnx_path
        self.session = onnx_session(onnx_path, providers, session_options)
        self.onnx_metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.text_provider = build_text_embedding_provider(self.cfg)
        check_onnx_metadata(self.onnx_metadata, self.cfg, onnx_path,
                            text_dim=self.text_provider.text_dim)
        self.text_dim = int(self.onnx_metadata[_META + "text_dim"])
        self.size_divisibility = int(self.onnx_metadata[_META + "size_divisibility"])
        self.square_size = int(self.onnx_metadata[_META + "square_size"])
        self.pixel_mean = np.asarray(self.cfg.MODEL.PIXEL_MEAN, np.float32).reshape(3, 1, 1)
        self.postprocess_args = inference_settings(self.cfg)
        self.set_vocabulary(vocabulary=vocabulary, classes=classes, task=task,
                            isthing=isthing)

    @property
    def providers(self) -> List[str]:
        """The execution providers onnxruntime runs the graph with."""
        return self.session.get_providers()

    def set_vocabulary(self, vocabulary: Optional[str] = None,
                       classes: Optional[Sequence[str]] = None,
                       task: Union[str, Sequence[str], None] = None,
                       isthing: Optional[Sequence[bool]] = None) -> None:
        """Score against another vocabulary from the next call on (embedded once, here).

        Arguments and errors as ``DaTaSegPredictor.set_vocabulary``.
        """
        v = resolve_vocabulary(self.cfg, vocabulary, classes, task, isthing)
        names, weights, index = vocabulary_weights(
            PREDICTOR_VOCABULARY, v.class_names, self.text_provider, self.text_dim)
        self.text_embeddings = np.ascontiguousarray(weights.detach().float().cpu().numpy())
        self.class_index = index  # rows -> classes under the "max" synonym reduction
        adopt_vocabulary(self, v)
        self.class_names = names  # as the classifier validated them

    def preprocess(self, original_image: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int]]:
        """A BGR image -> the graph's ``image`` input and the resized (unpadded) size.

        Resized as ``DaTaSegPredictor`` resizes (after 16-bit values are read as 8-bit),
        in ``INPUT.FORMAT`` order, padded at the bottom / right with the pixel mean to the
        size divisibility (or the square size) as ``ImageList.from_tensors`` pads.
        """
        image = resize_for_network(original_image, self.input_format, self.aug,
                                   "OnnxPredictor")
        h, w = image.shape[:2]
        if self.square_size:
            if max(h, w) > self.square_size:
                raise ValueError(
                    f"The resized image is {h}x{w} but this network takes images padded to "
                    f"{self.square_size}x{self.square_size}: lower the test size "
                    "(INPUT.MIN/MAX_SIZE_TEST) to at most that.")
            ph = pw = self.square_size
        else:
            div = self.size_divisibility
            ph, pw = -(-h // div) * div, -(-w // div) * div
        padded = np.empty((1, 3, ph, pw), np.float32)
        padded[0] = self.pixel_mean
        padded[0, :, :h, :w] = image.transpose(2, 0, 1)
        return padded, (h, w)

    def run_network(self, image: np.ndarray,
                    text_embeddings: Optional[np.ndarray] = None
                    ) -> Tuple[np.ndarray, np.ndarray]:
        """The graph on one preprocessed image: (class_logits (Q, K+1), mask_logits (Q, h, w)).

        Args:
            image: (1, 3, H, W) float32 as :meth:`preprocess` returns it.
            text_embeddings: (K, D) rows; default the current vocabulary's.
        Raises:
            ValueError: an image the graph cannot take (shape, or a size that is not padded
                to the size divisibility, or not the size of a fixed-size graph).
        """
        image = np.asarray(image, dtype=np.float32)
        rows = self.text_embeddings if text_embeddings is None else \
            np.ascontiguousarray(text_embeddings, dtype=np.float32)
        if image.ndim != 4 or image.shape[:2] != (1, 3) or min(image.shape[2:]) < 1:
            raise ValueError(
                f"The network takes one image of shape (1, 3, H, W), got {image.shape}; "
                "use OnnxPredictor.preprocess (or call the predictor on a BGR image).")
        div = self.size_divisibility
        if self.square_size and image.shape[2:] != (self.square_size, self.square_size) or \
                not self.square_size and (image.shape[2] % div or image.shape[3] % div):
            raise ValueError(
                f"The network takes images padded to multiples of {div} (a square of "
                f"{self.square_size} when that is not 0); got {image.shape[2]}x"
                f"{image.shape[3]}. Pad at the bottom / right with the pixel mean "
                "(OnnxPredictor.preprocess does).")
        if rows.ndim != 2 or rows.shape[1] != self.text_dim or rows.shape[0] < 1:
            raise ValueError(f"text_embeddings must be (K >= 1, {self.text_dim}), got "
                             f"{rows.shape}.")
        fixed = self.session.get_inputs()[0].shape
        if any(isinstance(want, int) and want != got for want, got in
               zip(fixed[2:], image.shape[2:])):
            raise ValueError(
                f"{self.onnx_path} was exported for images of exactly {fixed[2]}x{fixed[3]} "
                f"and cannot take {image.shape[2]}x{image.shape[3]}: export it again with "
                "`python -m dataseg.tools.export` (any image size).")
        class_logits, mask_logits = self.session.run(
            list(OUTPUT_NAMES), {INPUT_NAMES[0]: image, INPUT_NAMES[1]: rows})
        return class_logits, mask_logits

    def __call__(self, original_image: np.ndarray) -> dict:
        """
        Args:
            original_image: (H, W, 3) uint8 image in BGR order (``cv2.imread``).

        Returns:
            the output dict of ``DaTaSegPredictor`` (keys :attr:`outputs`), at the image's
            resolution.
        """
        image, image_size = self.preprocess(original_image)
        height, width = original_image.shape[:2]
        class_logits, mask_logits = self.run_network(image)
        class_logits = torch.from_numpy(class_logits)
        mask_logits = torch.from_numpy(mask_logits)
        if self.class_index is not None:  # "max" synonym reduction: best synonym per class
            class_logits = torch.cat([
                reduce_synonym_scores(class_logits[:, :-1], self.class_index,
                                      len(self.class_names)),
                class_logits[:, -1:]], dim=-1)
        stride = image.shape[-2] // mask_logits.shape[-2]
        return image_outputs(class_logits, mask_logits, stride, image_size, (height, width),
                             self.outputs, self.isthing, **self.postprocess_args)


# ---- checks and command line -------------------------------------------------------------


def compare_with_pytorch(model: nn.Module, onnx_path: str, height: int, width: int,
                         num_classes: int = 10, seed: int = 0, providers=None,
                         session_options=None) -> dict:
    """Run the network eagerly (as configured, CPU fast paths included) and from the file
    on one random padded image and ``num_classes`` random embedding rows.

    Returns:
        dict: ``class_logits_max_abs_diff``, ``mask_logits_max_abs_diff``, the outputs'
        largest magnitudes (``*_max_abs``) for scale, and ``mask_sign_agreement_pct``
        (pixels whose mask logit has the same sign, i.e. the same binary mask).
    """
    session = onnx_session(onnx_path, providers, session_options)
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (1, 3, height, width), generator=g).float()
    rows = torch.nn.functional.normalize(
        torch.randn(num_classes, int(model.classifier.text_dim), generator=g), dim=-1)
    with torch.no_grad():
        eager = [t.float().cpu().numpy() for t in
                 ExportableNetwork(model).eval()(image.to(model.device), rows.to(model.device))]
    ran = session.run(list(OUTPUT_NAMES), {INPUT_NAMES[0]: image.numpy(),
                                           INPUT_NAMES[1]: rows.numpy()})
    return {
        "class_logits_max_abs_diff": float(np.abs(ran[0] - eager[0]).max()),
        "mask_logits_max_abs_diff": float(np.abs(ran[1] - eager[1]).max()),
        "class_logits_max_abs": float(np.abs(eager[0]).max()),
        "mask_logits_max_abs": float(np.abs(eager[1]).max()),
        "mask_sign_agreement_pct": float(((ran[1] > 0) == (eager[1] > 0)).mean() * 100),
    }


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dataseg.tools.export",
        description="Export a DaTaSeg config and its MODEL.WEIGHTS to ONNX (docs/deploy.md).")
    p.add_argument("--config-file", required=True, metavar="FILE", help="DaTaSeg yaml config")
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--verify", action="store_true",
                   help="run the file with onnxruntime and the model with PyTorch on one "
                        "random image and print the largest differences")
    p.add_argument("opts", nargs=argparse.REMAINDER,
                   help="config overrides, KEY VALUE pairs (e.g. MODEL.WEIGHTS file.pth)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Command line: export, print what was written, optionally verify; returns the path."""
    from ..engine.setup import get_dataseg_cfg

    args = get_parser().parse_args(argv)
    cfg = get_dataseg_cfg(args.config_file, args.opts)
    model = build_inference_model(cfg)
    start = time.perf_counter()
    path = export_onnx(cfg, args.output, model=model, opset=args.opset)
    seconds = time.perf_counter() - start
    print(f"Wrote {path}: {os.path.getsize(path) / 2**20:.1f} MiB, opset {args.opset}, "
          f"{EXPORTER}, torch {torch.__version__}, {seconds:.1f} s.")
    print(f"  inputs:  {INPUT_NAMES[0]} (1, 3, H, W) float32, H and W multiples of "
          f"{_padding(model)[0]}, padded with MODEL.PIXEL_MEAN; {INPUT_NAMES[1]} "
          f"(K, {model.classifier.text_dim}) float32, any K")
    print(f"  outputs: {OUTPUT_NAMES[0]} ({model.transformer_decoder.num_queries}, K+1), "
          f"{OUTPUT_NAMES[1]} ({model.transformer_decoder.num_queries}, H/4, W/4)")
    if args.verify:
        div = _padding(model)[0]
        diffs = compare_with_pytorch(model.cpu(), path, 2 * div, 3 * div)
        print("  onnxruntime vs PyTorch: " + ", ".join(
            f"{k} {v:.3g}" for k, v in diffs.items()))
    return path


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("dataseg").setLevel(logging.INFO)
    main()
