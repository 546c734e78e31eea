"""Box task mapper: boxes only (box-supervised data never exposes masks to training)."""

import torch

from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, Instances

from .base import DaTaSegDatasetMapper

__all__ = ["BoxDatasetMapper"]


class BoxDatasetMapper(DaTaSegDatasetMapper):
    """Map COCO box annotations to ``gt_boxes`` (XYXY pixels) and ``gt_classes``.

    Any ``segmentation`` in the annotations is discarded before the transforms, so even a
    held-out set with masks trains as boxes only. Boxes cropped away are removed.
    """

    task = "box"
    filter_empty_annotations = True

    def annotations_to_instances(self, dataset_dict, label_maps, transforms, image_shape):
        annos = []
        for obj in dataset_dict.get("annotations", []):
            if obj.get("iscrowd", 0):
                continue
            obj = {k: v for k, v in obj.items() if k not in ("segmentation", "keypoints")}
            annos.append(utils.transform_instance_annotations(obj, transforms, image_shape))
        if not annos:
            instances = Instances(image_shape)
            instances.gt_boxes = Boxes(torch.zeros((0, 4), dtype=torch.float32))
            instances.gt_classes = torch.zeros((0,), dtype=torch.int64)
            return instances
        instances = utils.annotations_to_instances(annos, image_shape)
        return utils.filter_empty_instances(instances, by_box=True, by_mask=False)
