"""Shared machinery of DaTaSeg's task mappers: reading, augmentation, the dict contract.

Each task (panoptic, semantic, instance, box) only says how its annotations become
``Instances``; everything else (large-scale jitter + fixed-size crop for training, shortest-edge
resize for testing, the ``image``/``height``/``width``/``dataset_name`` keys) lives here so
every dataset yields the same contract (docs/interfaces.md).
"""

import copy
import logging
from typing import Dict, List, Optional

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..image_io import read_image

__all__ = ["DaTaSegDatasetMapper", "build_lsj_augmentation", "per_dataset_value",
           "test_image_size"]

logger = logging.getLogger(__name__)


def per_dataset_value(values, dataset_name: Optional[str], train_datasets) -> float:
    """Pick a per-dataset config value: ``values`` aligned with DATASETS.TRAIN, or a single
    value for all. Datasets outside DATASETS.TRAIN get the first value."""
    values = list(values)
    if len(values) == 1:
        return values[0]
    train_datasets = list(train_datasets)
    if dataset_name in train_datasets:
        if len(values) != len(train_datasets):
            raise ValueError(
                f"Per-dataset list {values} must have 1 or {len(train_datasets)} entries "
                f"(one per DATASETS.TRAIN entry)."
            )
        return values[train_datasets.index(dataset_name)]
    return values[0]


def test_image_size(cfg, dataset_name: Optional[str]):
    """(shortest edge, longest edge) at which ``dataset_name`` is evaluated.

    ``INPUT.DATASEG.MIN/MAX_SIZES_TEST`` (aligned with DATASETS.TEST) when given, else the
    dataset's standard test size (metadata ``dataseg_test_size``), else
    ``INPUT.MIN/MAX_SIZE_TEST``.
    """
    tests = list(cfg.DATASETS.TEST)
    mins, maxs = list(cfg.INPUT.DATASEG.MIN_SIZES_TEST), list(cfg.INPUT.DATASEG.MAX_SIZES_TEST)
    if mins and dataset_name in tests:
        i = tests.index(dataset_name)
        return int(mins[i]), int(maxs[i])
    standard = MetadataCatalog.get(dataset_name).get("dataseg_test_size", None) \
        if dataset_name else None
    if standard:
        return int(standard[0]), int(standard[1])
    return cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST


def build_lsj_augmentation(image_size: int, min_scale: float, max_scale: float,
                           random_flip: str = "horizontal", seg_pad_value: int = 255):
    """Large-scale jitter: resize to a random scale of ``image_size``, crop/pad to a square,
    then flip. ``seg_pad_value`` fills padded label pixels (the dataset's ignore label)."""
    augs = [
        T.ResizeScale(min_scale=min_scale, max_scale=max_scale,
                      target_height=image_size, target_width=image_size),
        T.FixedSizeCrop(crop_size=(image_size, image_size), seg_pad_value=seg_pad_value),
    ]
    if random_flip != "none":
        augs.append(T.RandomFlip(horizontal=random_flip == "horizontal",
                                 vertical=random_flip == "vertical"))
    return augs


class DaTaSegDatasetMapper:
    """Map a detectron2 dataset dict to DaTaSeg's model input (one task per subclass).

    Training: read the image, apply large-scale jitter + fixed-size crop + flip, and build
    ``instances`` with ``gt_classes`` and the task's ``gt_masks``/``gt_boxes``. Testing:
    resize the shortest edge and keep the original ``height``/``width`` for the outputs.

    Subclasses set :attr:`task` and implement :meth:`read_label_maps` (label images to be
    transformed like the image) and :meth:`annotations_to_instances`.

    Args:
        is_train: training or test mapping.
        dataset_name: registered dataset whose metadata drives the mapping.
        augmentations: detectron2 augmentations applied to image and labels.
        image_format: ``INPUT.FORMAT`` ("BGR", "RGB", ...).
    """

    task: str = ""
    # Images without any annotation teach nothing to instance/box training; detectron2 drops
    # them when DATALOADER.FILTER_EMPTY_ANNOTATIONS is on. Label-map tasks keep every image.
    filter_empty_annotations: bool = False

    @configurable
    def __init__(self, is_train: bool, *, dataset_name: str, augmentations: List,
                 image_format: str = "BGR"):
        self.is_train = is_train
        self.dataset_name = dataset_name
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.metadata = MetadataCatalog.get(dataset_name)
        mode = "training" if is_train else "inference"
        logger.info(f"[{type(self).__name__}] {dataset_name} ({mode}): {augmentations}")

    @classmethod
    def seg_pad_value(cls, metadata) -> int:
        return int(metadata.get("ignore_label", 255))

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_name: Optional[str] = None):
        if dataset_name is None:
            dataset_name = (cfg.DATASETS.TRAIN if is_train else cfg.DATASETS.TEST)[0]
        if is_train:
            train = cfg.DATASETS.TRAIN
            augs = build_lsj_augmentation(
                int(per_dataset_value(cfg.INPUT.DATASEG.IMAGE_SIZES, dataset_name, train)),
                float(per_dataset_value(cfg.INPUT.DATASEG.MIN_SCALES, dataset_name, train)),
                float(per_dataset_value(cfg.INPUT.DATASEG.MAX_SCALES, dataset_name, train)),
                random_flip=cfg.INPUT.RANDOM_FLIP,
                seg_pad_value=cls.seg_pad_value(MetadataCatalog.get(dataset_name)),
            )
        else:
            augs = [T.ResizeShortestEdge(*test_image_size(cfg, dataset_name))]
        return {"is_train": is_train, "dataset_name": dataset_name, "augmentations": augs,
                "image_format": cfg.INPUT.FORMAT}

    # -- hooks -------------------------------------------------------------------------------
    def read_label_maps(self, dataset_dict: Dict, image_shape) -> Dict[str, np.ndarray]:
        """Label images (H, W) to transform with the image, by name. Default: none."""
        return {}

    def annotations_to_instances(self, dataset_dict: Dict, label_maps: Dict[str, np.ndarray],
                                 transforms, image_shape):
        raise NotImplementedError

    # -- contract ----------------------------------------------------------------------------
    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        # EXIF orientation applied, 16-bit images scaled to 8-bit (dataseg.data.image_io).
        image = read_image(dataset_dict["file_name"], format=self.image_format)
        # Also fills height/width (original size) when the dict lacks them.
        utils.check_image_size(dataset_dict, image)
        label_maps = self.read_label_maps(dataset_dict, image.shape[:2]) if self.is_train else {}
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        label_maps = {k: transforms.apply_segmentation(v) for k, v in label_maps.items()}

        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        dataset_dict["dataset_name"] = self.dataset_name
        if self.is_train:
            dataset_dict["instances"] = self.annotations_to_instances(
                dataset_dict, label_maps, transforms, image_shape
            )
        # Raw annotations are consumed (train) or not needed (test: evaluators read files).
        for key in ("annotations", "segments_info"):
            dataset_dict.pop(key, None)
        return dataset_dict


def masks_to_instances(image_shape, masks: List[np.ndarray], classes: List[int],
                       with_boxes: bool):
    """Instances with BitMasks (+ boxes from the masks) from per-segment boolean masks."""
    from detectron2.structures import BitMasks, Instances

    instances = Instances(image_shape)
    instances.gt_classes = torch.tensor(classes, dtype=torch.int64)
    if masks:
        bitmasks = BitMasks(torch.from_numpy(np.ascontiguousarray(np.stack(masks))))
    else:
        bitmasks = BitMasks(torch.zeros((0,) + tuple(image_shape), dtype=torch.bool))
    instances.gt_masks = bitmasks
    if with_boxes:
        instances.gt_boxes = bitmasks.get_bounding_boxes()
    return instances
