"""Choosing evaluators from a dataset's metadata (``evaluator_type``), never from its name.

``EVALUATOR_REGISTRY`` maps an ``evaluator_type`` to a factory
``(dataset_name, output_folder, cfg) -> list[DatasetEvaluator]``; projects add their own with
:func:`register_evaluator`. Several test datasets in one run each get their own evaluators.
"""

import functools
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators, SemSegEvaluator
from detectron2.utils.file_io import PathManager

from ..data.catalog import DatasetValidationError, check_semantic_labels
from .checks import CheckedDatasetEvaluators
from .coco import DaTaSegCOCOEvaluator
from .panoptic import DaTaSegCOCOPanopticEvaluator

__all__ = ["EVALUATOR_REGISTRY", "register_evaluator", "build_dataseg_evaluator",
           "check_evaluator", "load_label_map", "load_checked_label_map"]

EvaluatorFactory = Callable[[str, Optional[str], object], List[DatasetEvaluator]]
EVALUATOR_REGISTRY: Dict[str, EvaluatorFactory] = {}
# evaluator_type -> (package its evaluator imports only when it evaluates, how to install it)
_REQUIREMENTS: Dict[str, Tuple[str, str]] = {}

_PANOPTICAPI = ("panopticapi", "pip install --no-deps panopticapi-lite")
_CITYSCAPES = ("cityscapesscripts", "pip install cityscapesscripts (note that it pins numpy<2)")


def register_evaluator(evaluator_type: str, requires: Optional[Tuple[str, str]] = None):
    """Decorator: use the decorated factory for datasets with this ``evaluator_type``.

    ``requires``: ``(package, install hint)`` the evaluator needs; :func:`check_evaluator`
    imports it up front.
    """

    def wrap(factory: EvaluatorFactory) -> EvaluatorFactory:
        EVALUATOR_REGISTRY[evaluator_type] = factory
        if requires is not None:
            _REQUIREMENTS[evaluator_type] = requires
        return factory

    return wrap


def check_evaluator(dataset_name: str) -> EvaluatorFactory:
    """The evaluator factory of ``dataset_name``, once its required package imports.

    Cheap (nothing is built or read), so training can call it before the first iteration.

    Raises:
        ValueError: the dataset has no ``evaluator_type`` or an unregistered one.
        ImportError: a package the evaluator needs is not installed (with the install line).
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_REGISTRY:
        raise ValueError(
            f"No evaluator for dataset {dataset_name!r} with evaluator_type "
            f"{evaluator_type!r}; registered types: {sorted(EVALUATOR_REGISTRY)}. Register the "
            "dataset with dataseg.data.register_*_dataset or add a factory with "
            "dataseg.evaluation.register_evaluator."
        )
    if evaluator_type in _REQUIREMENTS:
        package, install = _REQUIREMENTS[evaluator_type]
        try:
            __import__(package)
        except ImportError as e:
            raise ImportError(
                f"Dataset {dataset_name!r} is evaluated with {evaluator_type!r}, which needs "
                f"the package {package!r}: {install}."
            ) from e
    return EVALUATOR_REGISTRY[evaluator_type]


@register_evaluator("coco_panoptic_seg", requires=_PANOPTICAPI)
def _panoptic(dataset_name, output_folder, cfg):
    return [DaTaSegCOCOPanopticEvaluator(dataset_name, output_folder)]


def load_label_map(filename: str, copy: bool = False, dtype=None) -> np.ndarray:
    """Read a label PNG/TIFF as an array (numpy-2 safe).

    detectron2's default loader calls ``np.array(image, copy=False)``, which numpy 2 refuses
    for PIL images ("Unable to avoid copy"); ``np.asarray`` copies when it must.
    """
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


def load_checked_label_map(filename: str, copy: bool = False, dtype=None, *,
                           dataset_name: str, num_classes: int, ignore_label: int) -> np.ndarray:
    """:func:`load_label_map`, refusing a label map with a value that is not a class id
    ``0..num_classes-1`` nor ``ignore_label``.

    Registration checks only a sample of the label maps, and :class:`SemSegEvaluator` turns
    such values into a wrong mIoU without a word: ``num_classes`` lands in the ignored row of
    its confusion matrix (mIoU 100 there whatever is predicted), larger or negative values in
    other classes' cells. So every map is checked as the evaluator reads it
    (:func:`~dataseg.data.catalog.check_semantic_labels`, one vectorised pass).

    Raises:
        DatasetValidationError: naming the dataset, the file, the bad values and the fix.
    """
    labels = load_label_map(filename, copy=copy, dtype=dtype)
    try:
        check_semantic_labels(labels, num_classes, ignore_label, filename, dataset_name)
    except DatasetValidationError as e:
        raise DatasetValidationError(
            f"{e} Evaluation stops rather than score this file. Write label maps with class "
            f"ids 0..{num_classes - 1} and {ignore_label} for pixels not evaluated, or "
            f"register {dataset_name!r} with the class list and ignore_label its files use."
        ) from None
    return labels


@register_evaluator("sem_seg")
def _semantic(dataset_name, output_folder, cfg):
    meta = MetadataCatalog.get(dataset_name)
    loader = functools.partial(load_checked_label_map, dataset_name=dataset_name,
                               num_classes=len(meta.stuff_classes),
                               ignore_label=meta.ignore_label)
    return [SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder,
                            sem_seg_loading_fn=loader)]


@register_evaluator("coco")
def _coco(dataset_name, output_folder, cfg):
    # Which AP to compute comes from registration: ("segm", "bbox") for instance data,
    # ("bbox",) for box data, ("bbox", "segm") for box data with held-out masks.
    tasks = tuple(MetadataCatalog.get(dataset_name).get("coco_eval_tasks", ("segm", "bbox")))
    max_dets = cfg.TEST.DETECTIONS_PER_IMAGE if cfg is not None else None
    return [DaTaSegCOCOEvaluator(dataset_name, tasks=tasks, distributed=True,
                                 output_dir=output_folder, max_dets_per_image=max_dets)]


def _cityscapes(kind):
    def factory(dataset_name, output_folder, cfg):
        from detectron2.evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator

        cls = {"sem_seg": CityscapesSemSegEvaluator, "instance": CityscapesInstanceEvaluator}
        return [cls[kind](dataset_name)]

    return factory


register_evaluator("cityscapes_sem_seg", requires=_CITYSCAPES)(_cityscapes("sem_seg"))
register_evaluator("cityscapes_instance", requires=_CITYSCAPES)(_cityscapes("instance"))
# detectron2's own cityscapes panoptic registration: PQ through the panoptic json.
register_evaluator("cityscapes_panoptic_seg", requires=_PANOPTICAPI)(_panoptic)


def build_dataseg_evaluator(cfg, dataset_name: str,
                            output_folder: Optional[str] = None) -> DatasetEvaluators:
    """Evaluators for one test dataset, chosen by its ``evaluator_type`` metadata.

    Args:
        cfg: the config (``OUTPUT_DIR`` gives the default output folder); may be None.
        dataset_name: a registered dataset.
        output_folder: where evaluators dump predictions (default
            ``OUTPUT_DIR/inference/<dataset_name>``).

    Raises:
        ValueError, ImportError: as :func:`check_evaluator`.
    """
    factory = check_evaluator(dataset_name)
    if output_folder is None and cfg is not None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluators = factory(dataset_name, output_folder, cfg)
    return CheckedDatasetEvaluators(evaluators, dataset_name)
