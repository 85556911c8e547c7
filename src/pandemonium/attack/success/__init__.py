"""Success metrics: each defined once, as in the literature, for every consumer of evaluation numbers.

One metric class per task family, all keeping the contract of :mod:`pandemonium.attack.success.base`
(per-row hits / trials of named rates). A task type names its metric class in
``TaskTypeSpec.success_metric``; :data:`SUCCESS_METRICS` is the live view of those,
:func:`success_metric_for` builds one.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
from pandemonium.attack.success.columns import SuccessColumns, SuccessHeadline, success_columns
from pandemonium.attack.success.detection import DetectionSuccess, map50, patched_object_index
from pandemonium.attack.success.segmentation import SegmentationSuccess

__all__ = [
    "LOSS_TERM_NAMES",
    "SUCCESS_METRICS",
    "ClassificationSuccess",
    "DetectionSuccess",
    "RowCounts",
    "SegmentationSuccess",
    "SuccessColumns",
    "SuccessHeadline",
    "SuccessInputs",
    "SuccessMetric",
    "SuccessMetricError",
    "check_success_metric",
    "map50",
    "patch_region",
    "patched_object_index",
    "headline_for",
    "success_columns",
    "success_metric_for",
]

class _SpecMetrics(Mapping[str, type[SuccessMetric]]):
    """Task type -> success metric class, read live from the task-type registry."""

    def _table(self) -> dict[str, type[SuccessMetric]]:
        from pandemonium.tasktypes import registered_task_types

        return {s.name: s.success_metric for s in registered_task_types() if s.success_metric is not None}

    def __getitem__(self, task_type: str) -> type[SuccessMetric]:
        return self._table()[str(task_type)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


#: task type -> its ``TaskTypeSpec.success_metric`` (a live view: a plugin's task type appears once registered)
SUCCESS_METRICS: Mapping[str, type[SuccessMetric]] = _SpecMetrics()


def success_metric_for(task_type: str, **kwargs: Any) -> SuccessMetric:
    """The success metric of ``task_type`` (e.g. ``"detection"``), built with ``kwargs``."""
    try:
        cls = SUCCESS_METRICS[str(getattr(task_type, "value", task_type))]
    except KeyError:
        raise SuccessMetricError(f"no success metric for task type {task_type!r}; known: {sorted(SUCCESS_METRICS)}") from None
    return cls(**kwargs)


def headline_for(task_type: str, target_class: int | None = None) -> str:
    """The rate a patch against ``task_type`` is judged by (best patch, CLI headline)."""
    return success_metric_for(task_type).headline(target_class)
