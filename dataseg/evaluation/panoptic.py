"""detectron2's PQ evaluator, with a clear answer where panopticapi divides by zero."""

import contextlib
import json
import math

from detectron2.evaluation import COCOPanopticEvaluator
from detectron2.utils.file_io import PathManager

from ..data.catalog import DatasetValidationError

__all__ = ["DaTaSegCOCOPanopticEvaluator"]


class DaTaSegCOCOPanopticEvaluator(COCOPanopticEvaluator):
    """detectron2's :class:`COCOPanopticEvaluator`, without panopticapi's bare
    ``ZeroDivisionError``.

    panopticapi averages PQ over the classes that have a ground-truth or a predicted segment
    and divides by their count, which is 0 when there is none:

    * a test set without a single (non-crowd) ground-truth segment has no PQ to report: it is
      refused when the evaluator is built, before the first image is evaluated, naming the
      dataset and its json;
    * a group with no such class (``PQ_st`` of a json without stuff categories, or of a set
      whose stuff is all void while the model predicts no stuff) is reported as NaN, like
      COCO AP of a category without ground truth, instead of stopping the evaluation.

    Raises:
        DatasetValidationError: at construction, for a test set without ground truth.
    """

    def __init__(self, dataset_name, output_dir=None):
        super().__init__(dataset_name, output_dir)
        json_file = self._metadata.panoptic_json
        with PathManager.open(json_file) as f:
            annotations = json.load(f).get("annotations", [])
        if not any(not s.get("iscrowd", 0) for a in annotations
                   for s in a.get("segments_info", [])):
            raise DatasetValidationError(
                f"Test dataset {dataset_name!r}: none of the {len(annotations)} images of "
                f"{json_file!r} has a (non-crowd) ground-truth segment, so there is no PQ to "
                "compute (panopticapi would divide by zero). Check that the json's "
                "'segments_info' and the PNGs are the annotated ones, or remove the dataset "
                "from DATASETS.TEST.")

    def evaluate(self):
        with _undefined_pq_is_nan():
            return super().evaluate()


@contextlib.contextmanager
def _undefined_pq_is_nan():
    """While active, panopticapi's average over a group of classes none of which has a
    ground-truth or predicted segment is NaN (it raises ``ZeroDivisionError`` otherwise).

    panopticapi has no option for this and detectron2 calls it inside ``evaluate``: its
    ``PQStat.pq_average`` is wrapped for the duration (evaluation runs it in this process).
    """
    from panopticapi.evaluation import PQStat

    original = PQStat.pq_average

    def pq_average(self, categories, isthing):
        try:
            return original(self, categories, isthing)
        except ZeroDivisionError:
            # The count is 0: every class of the group has tp = fp = fn = 0, for which
            # panopticapi's per-class entry is 0.
            per_class = {label: {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                         for label, info in categories.items()
                         if isthing is None or (info["isthing"] == 1) == isthing}
            nan = math.nan
            return {"pq": nan, "sq": nan, "rq": nan, "n": 0}, per_class

    PQStat.pq_average = pq_average
    try:
        yield
    finally:
        PQStat.pq_average = original
