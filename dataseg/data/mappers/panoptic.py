"""Panoptic task mapper: one mask per thing instance and one per stuff region."""

import numpy as np
from PIL import Image

from detectron2.utils.file_io import PathManager

from ..catalog import DatasetValidationError, check_panoptic_segment_ids
from ..panoptic_png import rgb_to_segment_ids
from .base import DaTaSegDatasetMapper, masks_to_instances

__all__ = ["PanopticDatasetMapper"]


class PanopticDatasetMapper(DaTaSegDatasetMapper):
    """Map COCO-panoptic dicts (``pan_seg_file_name`` + ``segments_info``) to instances.

    ``gt_classes`` are contiguous ids over the dataset's full vocabulary (things and stuff);
    crowd segments and void pixels are in no mask. ``gt_boxes`` are derived from the masks.
    """

    task = "panoptic"

    def read_label_maps(self, dataset_dict, image_shape):
        path = dataset_dict["pan_seg_file_name"]
        with PathManager.open(path, "rb") as f:
            rgb = np.asarray(Image.open(f).convert("RGB"))
        pan = rgb_to_segment_ids(rgb)
        if pan.shape != tuple(image_shape):
            raise DatasetValidationError(
                f"Dataset {self.dataset_name!r}: panoptic PNG {path!r} is {pan.shape} but image "
                f"{dataset_dict['file_name']!r} is {tuple(image_shape)} (HxW)."
            )
        # Segment ids are arbitrary 24-bit values that nearest-resize of integer arrays cannot
        # carry and a pad value could collide with: transform a float map of 1-based segment
        # indices plus a validity map whose padded pixels become the pad value instead.
        index = np.zeros(pan.shape, dtype=np.float32)
        described = pan == 0  # void
        for k, seg in enumerate(dataset_dict["segments_info"]):
            segment = pan == seg["id"]
            described |= segment
            if not seg.get("iscrowd", 0):
                index[segment] = k + 1
        if not described.all():
            # Pixels of ids the json does not list would silently become background.
            check_panoptic_segment_ids(rgb, dataset_dict["segments_info"], path,
                                       self.dataset_name)
        return {"index": index, "valid": np.ones(pan.shape, dtype=np.uint8)}

    def annotations_to_instances(self, dataset_dict, label_maps, transforms, image_shape):
        index = label_maps["index"].astype(np.int64)
        index[label_maps["valid"] != 1] = 0
        present = np.unique(index)
        masks, classes = [], []
        segments = dataset_dict["segments_info"]
        for k in present[present > 0]:
            masks.append(index == k)
            classes.append(int(segments[k - 1]["category_id"]))
        return masks_to_instances(image_shape, masks, classes, with_boxes=True)
