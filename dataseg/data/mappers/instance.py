"""Instance task mapper: COCO annotations with masks -> BitMasks + boxes from the masks."""

import numpy as np

from detectron2.data import detection_utils as utils

from .base import DaTaSegDatasetMapper

__all__ = ["InstanceDatasetMapper"]


class InstanceDatasetMapper(DaTaSegDatasetMapper):
    """Map COCO instance annotations (polygons or RLE) to ``gt_masks`` and ``gt_boxes``.

    Crowd annotations are dropped; boxes are recomputed from the cropped masks so they stay
    tight; instances cropped away entirely are removed.
    """

    task = "instance"
    filter_empty_annotations = True

    def annotations_to_instances(self, dataset_dict, label_maps, transforms, image_shape):
        annos = [
            utils.transform_instance_annotations(obj, transforms, image_shape)
            for obj in dataset_dict.get("annotations", [])
            if obj.get("iscrowd", 0) == 0
        ]
        for obj in annos:
            # An RLE mask is transformed as a label map, so the crop pads it with the ignore
            # value (255), which BitMasks would read as object: only 1 is the object.
            if isinstance(obj.get("segmentation"), np.ndarray):
                obj["segmentation"] = obj["segmentation"] == 1
        instances = utils.annotations_to_instances(annos, image_shape, mask_format="bitmask")
        if not instances.has("gt_masks"):
            # No annotation at all: keep the contract (an empty mask set of the right size).
            from .base import masks_to_instances

            return masks_to_instances(image_shape, [], [], with_boxes=True)
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        return utils.filter_empty_instances(instances, by_box=True, by_mask=True)
