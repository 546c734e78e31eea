"""Semantic task mapper: one mask per class present; ignore pixels are in no mask."""

import numpy as np
from PIL import Image

from detectron2.utils.file_io import PathManager

from ..catalog import DatasetValidationError, check_semantic_labels
from .base import DaTaSegDatasetMapper, masks_to_instances

__all__ = ["SemanticDatasetMapper"]


class SemanticDatasetMapper(DaTaSegDatasetMapper):
    """Map ``sem_seg_file_name`` label maps (0..C-1 + ignore label) to per-class masks.

    The transformed label map is also kept as ``sem_seg`` (long tensor) for consumers that
    want dense targets; crop padding takes the ignore label.
    """

    task = "semantic"

    def read_label_maps(self, dataset_dict, image_shape):
        path = dataset_dict["sem_seg_file_name"]
        with PathManager.open(path, "rb") as f:
            labels = np.asarray(Image.open(f))
        if labels.ndim != 2:
            raise DatasetValidationError(
                f"Dataset {self.dataset_name!r}: label map {path!r} has shape {labels.shape}; "
                "expected a single-channel (H, W) image of class ids."
            )
        if labels.shape != tuple(image_shape):
            raise DatasetValidationError(
                f"Dataset {self.dataset_name!r}: label map {path!r} is {labels.shape} but image "
                f"{dataset_dict['file_name']!r} is {tuple(image_shape)} (HxW)."
            )
        num_classes = len(self.metadata.stuff_classes)
        ignore = self.seg_pad_value(self.metadata)
        if int(labels.max()) >= num_classes:
            check_semantic_labels(labels, num_classes, ignore, path, self.dataset_name)
        if labels.dtype != np.uint8:
            # Nearest resize of integer arrays goes through torch, which only takes floats.
            labels = labels.astype(np.float32)
        return {"sem_seg": labels}

    def annotations_to_instances(self, dataset_dict, label_maps, transforms, image_shape):
        import torch

        labels = label_maps["sem_seg"].astype(np.int64)
        ignore = self.seg_pad_value(self.metadata)
        dataset_dict["sem_seg"] = torch.from_numpy(labels)
        classes = [int(c) for c in np.unique(labels) if c != ignore]
        masks = [labels == c for c in classes]
        return masks_to_instances(image_shape, masks, classes, with_boxes=False)
