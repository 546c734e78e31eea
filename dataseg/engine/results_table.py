"""One table of the headline metric of every evaluated dataset."""

from collections import OrderedDict
from typing import Dict, Mapping

from tabulate import tabulate

__all__ = ["summarize_results", "format_results_table"]

# (evaluator task key, metric key, column name) in the order the table shows them.
_HEADLINE_METRICS = (
    ("panoptic_seg", "PQ", "PQ"),
    ("sem_seg", "mIoU", "mIoU"),
    ("segm", "AP", "mask AP"),
    ("bbox", "AP", "box AP"),
)


def summarize_results(results: Mapping[str, Mapping]) -> Dict[str, Dict[str, float]]:
    """Pick the headline metrics out of ``{dataset: {task: {metric: value}}}``."""
    summary = OrderedDict()
    for dataset_name, per_task in results.items():
        row = OrderedDict()
        for task, metric, column in _HEADLINE_METRICS:
            value = per_task.get(task, {}).get(metric) if per_task else None
            if value is not None:
                row[column] = float(value)
        summary[dataset_name] = row
    return summary


def format_results_table(results: Mapping[str, Mapping]) -> str:
    """Render :func:`summarize_results` as a text table (empty cells: not evaluated)."""
    summary = summarize_results(results)
    columns = [column for _, _, column in _HEADLINE_METRICS
               if any(column in row for row in summary.values())]
    rows = [[name] + [f"{row[c]:.2f}" if c in row else "-" for c in columns]
            for name, row in summary.items()]
    return tabulate(rows, headers=["dataset"] + columns, tablefmt="pipe")
