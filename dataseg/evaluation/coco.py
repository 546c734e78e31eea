"""detectron2's COCO AP evaluator, safe on exported jsons and on empty predictions."""

from detectron2.evaluation import COCOEvaluator

__all__ = ["DaTaSegCOCOEvaluator"]


class DaTaSegCOCOEvaluator(COCOEvaluator):
    """detectron2's :class:`COCOEvaluator`, with two fixes of silent errors.

    * pycocotools uses annotation id 0 as "unmatched", so a ground-truth annotation with id 0
      (labelme's export numbers them from 0) or a repeated id can never be matched: perfect
      predictions lose AP without a word. Such ids are renumbered 1..N in the evaluator's
      in-memory copy of the json (the file is not touched), with a warning.
    * A model predicting nothing gets AP 0: detectron2 reports NaN then, which hides a
      collapsed model in averaged tables and breaks "best checkpoint" selection.
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

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names)
        if coco_eval is None:
            self._logger.warning(
                f"The model predicted nothing on any image of {self._metadata.name!r} "
                f"({iou_type}); reporting AP 0 (detectron2 would report NaN).")
            results = {metric: 0.0 for metric in results}
        return results
