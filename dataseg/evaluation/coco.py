"""COCO AP evaluator that scores "no predictions at all" as 0 AP instead of NaN."""

from detectron2.evaluation import COCOEvaluator

__all__ = ["DaTaSegCOCOEvaluator"]


class DaTaSegCOCOEvaluator(COCOEvaluator):
    """detectron2's :class:`COCOEvaluator`, except that a model predicting nothing gets AP 0.

    detectron2 reports NaN then, which hides a collapsed model in averaged tables and breaks
    "best checkpoint" selection; AP of an empty detection set is 0 by definition.
    """

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is None:
            self._logger.warning(
                f"The model predicted nothing on any image of {self._metadata.name!r} "
                f"({iou_type}); reporting AP 0 (detectron2 would report NaN).")
            results = {metric: 0.0 for metric in results}
        return results
