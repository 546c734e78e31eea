"""detectron2's COCO AP evaluator, safe on exported jsons and on empty predictions."""

import pycocotools.mask as mask_util

from detectron2.evaluation import COCOEvaluator

__all__ = ["DaTaSegCOCOEvaluator"]


class DaTaSegCOCOEvaluator(COCOEvaluator):
    """detectron2's :class:`COCOEvaluator`, with two fixes of silent errors.

    * pycocotools uses annotation id 0 as "unmatched", so a ground-truth annotation with id 0
      (labelme's export numbers them from 0) or a repeated id can never be matched: perfect
      predictions lose AP without a word. Such ids are renumbered 1..N in the evaluator's
      in-memory copy of the json (the file is not touched), with a warning.
    * ``area`` decides the size bucket of an object (APs / APm / APl) and exported jsons
      often carry a wrong one (0, missing, the box's area for a mask, another scale). Where
      it is missing, not positive, larger than the box, or more than 10 % away from the
      mask's pixel area, it is recomputed (mask area, else box area), with a warning.
    * A model predicting nothing gets AP 0: detectron2 reports NaN then, which hides a
      collapsed model in averaged tables and breaks "best checkpoint" selection.
    * A test set without ground truth (an ``annotations`` list with no non-crowd object)
      reports NaN, pycocotools' and detectron2's "no ground truth", whatever the model
      predicts, with a warning when the evaluator is built (before the first image). A json
      without an ``annotations`` key is detectron2's test-dev case: predictions are only
      written, nothing is scored.
    """

    def __init__(self, dataset_name, *args, **kwargs):
        super().__init__(dataset_name, *args, **kwargs)
        annotations = self._coco_api.dataset.get("annotations", [])
        ids = [a.get("id") for a in annotations]
        if ids and (0 in ids or None in ids or len(set(ids)) != len(ids)):
            self._logger.warning(
                f"{self._metadata.json_file!r} has annotation ids that pycocotools cannot "
                "match (id 0, missing or repeated ids); evaluating against a copy with ids "
                "1..N. Renumber the annotations of the file to silence this.")
            for i, a in enumerate(annotations, start=1):
                a["id"] = i
            self._coco_api.createIndex()
        self._has_ground_truth = any(not a.get("iscrowd", 0) for a in annotations)
        if self._do_evaluation and not self._has_ground_truth:
            found = f"only crowd annotations ({len(annotations)})" if annotations else \
                "no annotation"
            self._logger.warning(
                f"Test dataset {self._metadata.name!r}: {self._metadata.json_file!r} has "
                f"{found}, so there is no ground-truth object and its AP is NaN ('no ground "
                "truth'), not a score. Add the annotations, or remove the dataset from "
                "DATASETS.TEST.")
        fixed = _fix_areas(self._coco_api)
        if fixed:
            self._logger.warning(
                f"{self._metadata.json_file!r}: {fixed} of {len(annotations)} annotations have "
                "an 'area' that disagrees with their mask or box (missing, <= 0, larger than "
                "the box or > 10 % off the mask); it decides APs/APm/APl, so the evaluation "
                "uses the recomputed area. Fix the file's 'area' fields to silence this.")

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is None and self._has_ground_truth:
            self._logger.warning(
                f"The model predicted nothing on any image of {self._metadata.name!r} "
                f"({iou_type}); reporting AP 0 (detectron2 would report NaN).")
            results = {metric: 0.0 for metric in results}
        return results


def _fix_areas(coco_api) -> int:
    """Recompute wrong ``area`` fields in place (mask area, else box area); returns the count."""
    fixed = 0
    for ann in coco_api.dataset.get("annotations", []):
        if ann.get("iscrowd", 0):
            continue
        box = ann.get("bbox") or [0, 0, 0, 0]
        box_area = float(box[2]) * float(box[3])
        mask_area = None
        if ann.get("segmentation"):
            mask_area = float(mask_util.area(coco_api.annToRLE(ann)))
        area = ann.get("area", None)
        wrong = (
            area is None or area <= 0 or area > 1.01 * box_area + 1.0
            or (mask_area is not None and abs(area - mask_area) > 0.1 * max(mask_area, 1.0))
        )
        if wrong:
            ann["area"] = mask_area if mask_area is not None else box_area
            fixed += 1
    if fixed:
        coco_api.createIndex()
    return fixed
