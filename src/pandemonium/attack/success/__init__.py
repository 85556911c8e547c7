"""Success metrics: each defined once, as in the literature, for every consumer of evaluation numbers.

One metric class per task family, all keeping the contract of :mod:`pandemonium.attack.success.base`
(per-row hits / trials of named rates). :data:`SUCCESS_METRICS` maps a task type to its metric class;
:func:`success_metric_for` builds it.
"""

from __future__ import annotations

from typing import Any

from pandemonium.attack.success.base import (
    LOSS_TERM_NAMES,
    RowCounts,
    SuccessInputs,
    SuccessMetric,
    SuccessMetricError,
    check_success_metric,
    patch_region,
)
from pandemonium.attack.success.classification import ClassificationSuccess
from pandemonium.attack.success.detection import DetectionSuccess, map50, patched_object_index
from pandemonium.attack.success.segmentation import SegmentationSuccess

__all__ = [
    "LOSS_TERM_NAMES",
    "SUCCESS_METRICS",
    "ClassificationSuccess",
    "DetectionSuccess",
    "RowCounts",
    "SegmentationSuccess",
    "SuccessInputs",
    "SuccessMetric",
    "SuccessMetricError",
    "check_success_metric",
    "map50",
    "patch_region",
    "patched_object_index",
    "success_metric_for",
]

SUCCESS_METRICS: dict[str, type[SuccessMetric]] = {
    "classification": ClassificationSuccess,
    "detection": DetectionSuccess,
    "semantic_segmentation": SegmentationSuccess,
}


def success_metric_for(task_type: str, **kwargs: Any) -> SuccessMetric:
    """The success metric of ``task_type`` (e.g. ``"detection"``), built with ``kwargs``."""
    try:
        cls = SUCCESS_METRICS[str(task_type)]
    except KeyError:
        raise SuccessMetricError(f"no success metric for task type {task_type!r}; known: {sorted(SUCCESS_METRICS)}") from None
    return cls(**kwargs)
