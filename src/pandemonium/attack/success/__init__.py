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
    "headline_for",
    "success_columns",
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


def success_columns(task_type: str, y_arm: Any, y_control: Any, targets: Any, target_class: int | None = None,
                    conf_threshold: float = 0.5, iou_threshold: float = 0.5, **_: Any) -> dict[str, Any]:
    """The task-type spec's ``success`` field: per-row ``<rate>_hits`` / ``<rate>_trials`` tensors of one
    scored arm (``y_arm``) against the control, the patch mask taken from ``targets["patch_mask"]``."""
    import torch

    kwargs = {"score_threshold": conf_threshold, "iou_threshold": iou_threshold} if task_type == "detection" else {}
    metric = success_metric_for(task_type, **kwargs)
    targets = dict(targets or {})
    counts = metric(SuccessInputs(y_arm, y_control, targets, targets.get("patch_mask"), target_class))
    out: dict[str, Any] = {}
    for name, c in counts.items():
        out[f"{name}_hits"], out[f"{name}_trials"] = torch.from_numpy(c.hits), torch.from_numpy(c.trials)
    return out


def headline_for(task_type: str, target_class: int | None = None) -> str:
    """The rate a patch against ``task_type`` is judged by (best patch, CLI headline)."""
    return success_metric_for(task_type).headline(target_class)
