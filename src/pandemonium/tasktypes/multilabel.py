"""Multilabel classification: one independent logit per class, ``(B, C)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pandemonium.tasktypes.base import TaskTypeSpec, hooks_in, register_task_type
from pandemonium.tasktypes.classification import logits_expected, logits_fit

_output_fits, _expected_output = logits_fit, logits_expected


def _head(in_channels: Sequence[int], num_classes: int, dropout: float = 0.1, **_: Any) -> Any:
    from pandemonium.models.heads import MultilabelHead

    return MultilabelHead(in_channels, num_classes, dropout)


def _metric_inputs(outputs: Any, batch: Mapping[str, Any], score_thr: float = 0.05, nms_iou: float = 0.5) -> tuple[Any, Any]:
    return outputs.detach(), batch["classes"].long()


def _scores(outputs: Any) -> Any:
    return outputs.sigmoid()


def _prediction_table(outputs: Mapping[str, Any], class_names: Sequence[str], split: str) -> Any:
    import pandas as pd

    columns: dict[str, Any] = {}
    for i, name in enumerate(class_names or range(outputs["preds"].shape[1])):
        columns[f"target_{name}"] = outputs["target"][:, i].numpy()
        columns[f"pred_{name}"] = (outputs["scores"][:, i] > 0.5).int().numpy()
        columns[f"prob_{name}"] = outputs["scores"][:, i].numpy()
    return pd.DataFrame(columns)


def _adapt_output(y: Any, adapter: Any, image_size: tuple[int, int]) -> Any:
    import torch

    y = adapter.tensor(y)
    return torch.logit(y.clamp(adapter.eps, 1 - adapter.eps)) if adapter.kind == "sigmoid" else y


SPEC = register_task_type(TaskTypeSpec(
    name="multilabel_classification", target="classes", loss="binary_cross_entropy", metrics="multilabel",
    output_kinds=("logits", "sigmoid"), description="any number of classes per image", **hooks_in(globals()),
))
