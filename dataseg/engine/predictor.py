"""One-image inference with any vocabulary, on detectron2's ``DefaultPredictor`` conventions.

The call follows ``detectron2.engine.DefaultPredictor`` (BGR ``np.ndarray`` in, the model's
output dict for that image out); what differs is DaTaSeg's: the vocabulary the classes are
scored against, the per-dataset test resize and the project's checkpointer.
"""

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from ..data.image_io import as_uint8_image
from ..data.mappers.base import test_image_size
from ..modeling.meta_arch import DaTaSeg, default_vocabulary_name
from ..tasks import TASKS, get_task
from ..text.vocabulary import normalize_class_name
from ..utils.visualizer import visualization_metadata
from .checkpoint import DaTaSegCheckpointer, local_weights_file

__all__ = ["DaTaSegPredictor", "PredictorVocabulary", "build_inference_model",
           "resize_for_network", "resolve_vocabulary", "task_outputs"]

logger = logging.getLogger(__name__)

# Name under which the predictor's vocabulary is given to the model (inputs carry it as
# "dataset_name"); not a registered dataset, so the model takes task and flags from us.
PREDICTOR_VOCABULARY = "dataseg_predictor"


def task_outputs(tasks: Sequence[str]) -> tuple:
    """The model outputs the tasks need, in order, without repeats ("box" -> instances)."""
    outputs = []
    for task in tasks:
        for output in get_task(task).default_test_outputs:
            if output not in outputs:
                outputs.append(output)
    return tuple(outputs)


def _registered(name: str):
    meta = DaTaSeg.registered_metadata(name)
    if meta is not None:
        return meta
    registered = sorted(n for n in MetadataCatalog.list()
                        if MetadataCatalog.get(n).get("dataseg_classes", None) is not None)
    raise ValueError(
        f"Vocabulary {name!r} is not a dataset registered with DaTaSeg metadata "
        f"(dataseg_classes); registered: {registered}. Give class names with classes=[...] "
        "instead.")


def build_inference_model(cfg):
    """The model of ``cfg`` in eval mode with ``cfg.MODEL.WEIGHTS`` loaded for inference.

    Weights are loaded with :class:`DaTaSegCheckpointer`, which refuses a checkpoint that
    does not fill every tensor of the configured model (unless
    ``MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS``); a missing local file fails with its path;
    empty ``MODEL.WEIGHTS`` keeps the random initialisation, with a warning.
    """
    model = build_model(cfg)
    model.eval()
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        logger.warning("MODEL.WEIGHTS is empty: the model is randomly initialised.")
    else:
        local = local_weights_file(weights)
        if local is not None and not os.path.isfile(local):
            raise FileNotFoundError(f"MODEL.WEIGHTS file {local!r} does not exist.")
        DaTaSegCheckpointer(
            model, min_backbone_fraction=cfg.MODEL.DATASEG.MIN_LOADED_BACKBONE_FRACTION,
            allow_partial=cfg.MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS,
        ).load(weights)
    return model


def resize_for_network(original_image: np.ndarray, input_format: str, aug,
                       predictor: str) -> np.ndarray:
    """A predictor's BGR input image as its network takes it, before batching.

    Checked, 16-bit values read as 8-bit (as :func:`dataseg.data.image_io.read_image` reads
    files), in ``input_format`` ("RGB" or "BGR") channel order, resized by ``aug`` (the test
    resize). Shared by every predictor of the project, so they feed their networks alike.

    Args:
        original_image: (H, W, 3) BGR image (``cv2.imread``).
        predictor: the caller's name, for the message.
    Returns:
        (h, w, 3) uint8 array.
    Raises:
        ValueError: not one non-empty (H, W, 3) numpy image.
    """
    if not isinstance(original_image, np.ndarray) or original_image.ndim != 3 \
            or original_image.shape[2] != 3 or min(original_image.shape[:2]) < 1:
        raise ValueError(
            f"{predictor} takes one (H, W, 3) BGR numpy image (cv2.imread), got "
            f"{type(original_image).__name__} of shape "
            f"{getattr(original_image, 'shape', '?')}.")
    image = as_uint8_image(original_image)
    if input_format == "RGB":
        image = image[:, :, ::-1]
    return aug.get_transform(image).apply_image(image)


@dataclass
class PredictorVocabulary:
    """What a predictor scores against and produces (:func:`resolve_vocabulary`).

    Attributes:
        vocabulary: the registered dataset it starts from, or None (class names only).
        class_names: the classes, in output order (entries may hold comma-separated synonyms).
        isthing: thing flag per class.
        tasks: the tasks asked for; ``task`` is the one the vocabulary is set with
            ("panoptic" when asked for, since it needs the thing/stuff split).
        outputs: the output keys each call returns.
        metadata: drawing metadata (class names and the dataset's palette).
        test_size: (shortest edge, longest edge) of the test resize.
    """

    vocabulary: Optional[str]
    class_names: List[str]
    isthing: List[bool]
    tasks: List[str]
    task: str
    outputs: tuple
    metadata: object
    test_size: Tuple[int, int]


def adopt_vocabulary(predictor, v: PredictorVocabulary) -> None:
    """Set the attributes every predictor of the project exposes for its vocabulary ``v``:
    ``vocabulary``, ``class_names``, ``isthing``, ``tasks``, ``outputs``, ``metadata`` and
    ``aug`` (the test resize)."""
    predictor.vocabulary = v.vocabulary
    predictor.class_names = v.class_names
    predictor.isthing = v.isthing
    predictor.tasks = v.tasks
    predictor.outputs = v.outputs
    predictor.metadata = v.metadata
    min_size, max_size = v.test_size
    predictor.aug = T.ResizeShortestEdge([min_size, min_size], max_size)


def resolve_vocabulary(cfg, vocabulary: Optional[str] = None,
                       classes: Optional[Sequence[str]] = None,
                       task: Union[str, Sequence[str], None] = None,
                       isthing: Optional[Sequence[bool]] = None) -> PredictorVocabulary:
    """The classes, flags, outputs and test size of a predictor's vocabulary.

    Arguments as :class:`DaTaSegPredictor`'s (its rules: a registered dataset, class names,
    or both; with neither, the config's default vocabulary). Shared by every predictor of
    the project, so they resolve a vocabulary alike.

    Raises:
        ValueError: an unknown vocabulary or task, ``isthing`` of the wrong length, or a
            panoptic task without thing/stuff flags.
    """
    tasks = [task] if isinstance(task, str) else list(task or [])
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"Unknown task {t!r}; DaTaSeg's tasks are {list(TASKS)}.")
    extra = []  # given names, without empties and repeats (as the text encoder sees them)
    for c in (str(c).strip() for c in (classes or [])):
        if c and normalize_class_name(c) not in {normalize_class_name(e) for e in extra}:
            extra.append(c)
    if vocabulary is None and not extra:
        vocabulary = default_vocabulary_name(cfg)
        if not vocabulary:
            raise ValueError(
                "No vocabulary: pass vocabulary=<registered dataset> or classes=[...], or "
                "name a default in the config (MODEL.DATASEG.TEST.DEFAULT_VOCABULARY or "
                "DATASETS.TEST).")
    meta = _registered(vocabulary) if vocabulary else None
    names: List[str] = list(meta.dataseg_classes) if meta is not None else []
    flags: List[bool] = list(meta.dataseg_isthing) if meta is not None else []
    known = {normalize_class_name(n) for n in names}
    # Extra names already in the dataset's vocabulary would split its score in two.
    extra = [c for c in extra if normalize_class_name(c) not in known]
    names += extra
    flags += [True] * len(extra)
    if isthing is not None:
        flags = [bool(t) for t in isthing]
        if len(flags) != len(names):
            raise ValueError(f"isthing has {len(flags)} flags for {len(names)} classes "
                             f"({names}).")
    if not tasks:
        tasks = [meta.dataseg_task] if meta is not None else ["semantic"]
        outputs = tuple(meta.get("dataseg_test_outputs", None) or ()) if meta is not None \
            else ()
        outputs = outputs or task_outputs(tasks)
    else:
        outputs = task_outputs(tasks)
    # Panoptic inference is the one that needs the thing/stuff split; the model checks it.
    vocab_task = "panoptic" if "panoptic" in tasks else tasks[0]
    # The model's own checks (task, flags, outputs), with its messages.
    info = DaTaSeg.make_info(PREDICTOR_VOCABULARY, names, vocab_task, flags, outputs)
    return PredictorVocabulary(
        vocabulary=vocabulary, class_names=names, isthing=info["isthing"], tasks=tasks,
        task=vocab_task, outputs=outputs, metadata=visualization_metadata(names, meta),
        test_size=test_image_size(cfg, vocabulary))


class DaTaSegPredictor(DefaultPredictor):
    """``DefaultPredictor`` for DaTaSeg: one BGR image in, the model's outputs for it out.

    Compared with detectron2's ``DefaultPredictor`` it

    1. loads ``cfg.MODEL.WEIGHTS`` with :class:`DaTaSegCheckpointer` (a checkpoint trained
       against text embeddings of another width, or one that does not fill every tensor of
       the configured model, fails instead of running with random weights in places, unless
       ``MODEL.DATASEG.TEST.ALLOW_PARTIAL_WEIGHTS``; a missing file fails with its path);
    2. scores classes against a vocabulary: a registered dataset's (``vocabulary=``), any
       class names (``classes=``), or both (the dataset's classes, then the extra names);
       with neither, the config's default vocabulary
       (``MODEL.DATASEG.TEST.DEFAULT_VOCABULARY``, else ``DATASETS.TEST[0]``);
    3. resizes as that dataset is evaluated (``dataseg.data.mappers.test_image_size``:
       ``INPUT.DATASEG.MIN/MAX_SIZES_TEST``, the dataset's standard size, else
       ``INPUT.MIN/MAX_SIZE_TEST``; custom class names use the latter);
    4. produces the outputs of ``task`` (one task or several: "panoptic" -> ``panoptic_seg``,
       "semantic" -> ``sem_seg``, "instance"/"box" -> ``instances``), all from one forward
       pass; without ``task``, those the registered dataset is evaluated with.

    :meth:`set_vocabulary` switches the classes without rebuilding or reloading the model.

    Args:
        cfg: DaTaSeg config (``dataseg.engine.get_dataseg_cfg``).
        vocabulary: name of a dataset registered with DaTaSeg metadata.
        classes: class names (one entry may hold comma-separated synonyms).
        task: task name or list of task names (``dataseg.tasks``).
        isthing: thing flag per class of the resulting vocabulary (panoptic needs them; a
            registered dataset gives its own; extra classes default to things).

    Attributes:
        metadata: drawing metadata of the current vocabulary (class names and the dataset's
            palette), as ``DefaultPredictor.metadata``.
        class_names, isthing, outputs: the current vocabulary, its thing flags, and the
            output keys each call returns.

    Example::

        predictor = DaTaSegPredictor(cfg, classes=["person", "dog", "grass"],
                                     task="panoptic", isthing=[True, True, False])
        outputs = predictor(cv2.imread("input.jpg"))   # {"panoptic_seg": (ids, segments)}
        predictor.set_vocabulary(vocabulary="ade20k_sem_seg_val", task="semantic")
    """

    # DefaultPredictor.__init__ is replaced, not extended: it would load the weights with
    # DetectionCheckpointer and fix the resize to INPUT.MIN/MAX_SIZE_TEST.
    def __init__(self, cfg, vocabulary: Optional[str] = None,
                 classes: Optional[Sequence[str]] = None,
                 task: Union[str, Sequence[str], None] = None,
                 isthing: Optional[Sequence[bool]] = None):
        self.cfg = cfg.clone()  # the model may modify its config
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(
                f"DaTaSegPredictor takes BGR images and converts them to INPUT.FORMAT; it "
                f"supports RGB and BGR, not {self.input_format!r}.")
        self.model = build_inference_model(self.cfg)
        self.set_vocabulary(vocabulary=vocabulary, classes=classes, task=task, isthing=isthing)

    def set_vocabulary(self, vocabulary: Optional[str] = None,
                       classes: Optional[Sequence[str]] = None,
                       task: Union[str, Sequence[str], None] = None,
                       isthing: Optional[Sequence[bool]] = None) -> None:
        """Score against another vocabulary from the next call on (same model and weights).

        Arguments as the constructor's. Raises ValueError for an unknown vocabulary or task,
        ``isthing`` of the wrong length, or a panoptic task without thing/stuff flags.
        """
        v = resolve_vocabulary(self.cfg, vocabulary, classes, task, isthing)
        self.model.set_vocabulary(PREDICTOR_VOCABULARY, v.class_names, task=v.task,
                                  isthing=v.isthing, test_outputs=v.outputs)
        adopt_vocabulary(self, v)

    def __call__(self, original_image: np.ndarray) -> dict:
        """
        Args:
            original_image: (H, W, 3) uint8 image in BGR order (``cv2.imread``).

        Returns:
            the model's output dict for the image (keys :attr:`outputs`), at its resolution.
        """
        image = resize_for_network(original_image, self.input_format, self.aug,
                                   "DaTaSegPredictor")
        height, width = original_image.shape[:2]
        with torch.no_grad():
            image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            inputs = {"image": image, "height": height, "width": width,
                      "dataset_name": PREDICTOR_VOCABULARY}
            return self.model([inputs])[0]
