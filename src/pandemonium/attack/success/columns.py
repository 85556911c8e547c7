"""A success metric as a task type's ``success`` / ``headline`` hooks (``TaskTypeSpec.success_metric``).

The hooks are frozen dataclasses, so two specs naming the same metric class compare equal.

>>> import torch
>>> from pandemonium.attack.success.classification import ClassificationSuccess
>>> columns = SuccessColumns(ClassificationSuccess)
>>> out = columns(torch.eye(2)[[1, 1]], torch.eye(2)[[0, 1]], {"class": torch.tensor([0, 1])})
>>> out["untargeted_success_hits"].tolist(), out["untargeted_success_trials"].tolist()
([1.0, 0.0], [1.0, 1.0])
>>> SuccessHeadline(ClassificationSuccess)(3)
'targeted_success'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pandemonium.attack.success.base import SuccessInputs, SuccessMetric

__all__ = ["SuccessColumns", "SuccessHeadline", "success_columns", "task_metrics"]


def success_columns(metric: SuccessMetric, y_arm: Any, y_control: Any, targets: Mapping[str, Any] | None,
                    target_class: int | None = None) -> dict[str, torch.Tensor]:
    """Per-row ``<rate>_hits`` / ``<rate>_trials`` tensors of one scored arm (``y_arm``) against the
    control, the patch mask taken from ``targets["patch_mask"]``."""
    targets = dict(targets or {})
    counts = metric(SuccessInputs(y_arm, y_control, targets, targets.get("patch_mask"), target_class))
    out: dict[str, torch.Tensor] = {}
    for name, c in counts.items():
        out[f"{name}_hits"], out[f"{name}_trials"] = torch.from_numpy(c.hits), torch.from_numpy(c.trials)
    return out


@dataclass(frozen=True)
class SuccessColumns:
    """``TaskTypeSpec.success`` of a metric class: ``(y_patch, y_control, targets, target_class=None,
    conf_threshold=0.5, iou_threshold=0.5) -> {column: Tensor(B)}``."""

    metric: type[SuccessMetric]

    def __call__(self, y_patch: Any, y_control: Any, targets: Mapping[str, Any] | None, target_class: int | None = None,
                 conf_threshold: float = 0.5, iou_threshold: float = 0.5, **_: Any) -> dict[str, torch.Tensor]:
        metric = self.metric.with_thresholds(conf_threshold=conf_threshold, iou_threshold=iou_threshold)
        return success_columns(metric, y_patch, y_control, targets, target_class)


@dataclass(frozen=True)
class SuccessHeadline:
    """``TaskTypeSpec.headline`` of a metric class: the rate a patch is judged by."""

    metric: type[SuccessMetric]

    def __call__(self, target_class: int | None = None) -> str:
        return self.metric().headline(target_class)


def task_metrics(
    y_patch: Any,
    y_control: Any,
    targets: Mapping[str, Any] | None,
    target_class: int | None = None,
    conf_threshold: float = 0.5,
    iou_threshold: float = 0.5,
    task_type: str | None = None,
) -> dict[str, torch.Tensor]:
    """Per-row success columns of one scored arm, from the task type's spec (``TaskTypeSpec.success``).

    Without ``task_type`` the spec is the first whose ``recognises`` accepts the output layout; an
    ensemble output ``{model_name: output}`` gets metrics per model, prefixed ``<model_name>.``.
    """
    from pandemonium.tasktypes import specs_recognising, task_type_spec

    targets = targets or {}
    specs = [task_type_spec(task_type)] if task_type is not None else specs_recognising(y_patch)
    if specs and specs[0].success is not None:
        return dict(specs[0].success(y_patch, y_control, targets, target_class=target_class,
                                     conf_threshold=conf_threshold, iou_threshold=iou_threshold))
    if isinstance(y_patch, Mapping) and isinstance(y_control, Mapping):
        out: dict[str, torch.Tensor] = {}
        for name, value in y_patch.items():
            if name in y_control:
                # several tasks (MultiTaskPipeline): targets by task name; an ensemble shares one set
                own = targets.get(name) if isinstance(targets.get(name), Mapping) else targets
                sub = task_metrics(value, y_control[name], own, target_class, conf_threshold, iou_threshold)
                out.update({f"{name}.{k}": v for k, v in sub.items()})
        return out
    return {}
