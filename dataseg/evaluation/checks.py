"""Evaluators never report an impossible number silently."""

import logging
import math

from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm

__all__ = ["NoPredictionsError", "CheckedDatasetEvaluators"]

logger = logging.getLogger(__name__)


# COCO AP of small / medium / large objects: NaN when no object of that size exists.
_SIZE_BUCKETS = ("APs", "APm", "APl")


class NoPredictionsError(RuntimeError):
    """An evaluator was asked for a score without having seen a single prediction."""


class CheckedDatasetEvaluators(DatasetEvaluators):
    """detectron2's :class:`DatasetEvaluators` for ONE dataset, with two sanity checks.

    * No input at all (an empty test set, a loader that yielded nothing): detectron2's
      evaluators then return ``{}``, NaN, or a score over an empty confusion matrix; this raises
      :class:`NoPredictionsError` naming the dataset instead.
    * A summary metric that is NaN (e.g. mIoU when no pixel has a valid ground-truth label)
      is logged as a warning naming the dataset and metric. Per-class entries (``AP-cat``)
      are NaN legitimately for classes absent from the ground truth and are left alone.

    Args:
        evaluators: the dataset's evaluators.
        dataset_name: the dataset they evaluate (for messages).
    """

    def __init__(self, evaluators, dataset_name: str):
        super().__init__(evaluators)
        self.dataset_name = dataset_name
        self._num_inputs = 0

    def reset(self):
        self._num_inputs = 0
        super().reset()

    def process(self, inputs, outputs):
        self._num_inputs += len(inputs)
        super().process(inputs, outputs)

    def evaluate(self):
        total = sum(comm.all_gather(self._num_inputs))
        if total == 0:
            names = [type(e).__name__ for e in self._evaluators]
            raise NoPredictionsError(
                f"Evaluation of dataset {self.dataset_name!r} ({', '.join(names)}) received no "
                "predictions (0 images processed), so there is no score to report. The test "
                "dataset is empty or its loader yielded nothing: check its registration and "
                "DATASETS.TEST."
            )
        results = super().evaluate()
        for task, metrics in (results or {}).items():
            if not isinstance(metrics, dict):
                continue
            for key, value in metrics.items():
                if "-" not in key and isinstance(value, float) and math.isnan(value):
                    cause = ("no ground-truth object in that size range (by the json's "
                             "'area' fields, recomputed where they disagree with the "
                             "masks or boxes)" if key in _SIZE_BUCKETS else
                             "there is no ground truth of the evaluated kind (all pixels "
                             "ignored, or no annotation)")
                    logger.warning(
                        f"Dataset {self.dataset_name!r}: {task}/{key} is NaN over {total} "
                        f"images: {cause}. It is not a score; do not average it."
                    )
        return results
