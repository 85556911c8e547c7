"""Scalar regression: values ``(B,)`` (or ``(B, 1)``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pandemonium.tasktypes.base import TaskTypeSpec, hooks_in, register_task_type


def _head(in_channels: Sequence[int], num_classes: int, dropout: float = 0.1, **_: Any) -> Any:
    from pandemonium.models.heads import RegressionHead

    return RegressionHead(in_channels, dropout)


def _output_fits(output: Any, num_classes: int, image_size: tuple[int, int], batch: int) -> bool:
    import torch

    return isinstance(output, torch.Tensor) and tuple(output.shape) in ((batch,), (batch, 1))


def _expected_output(num_classes: int, image_size: tuple[int, int], batch: int) -> str:
    return f"values of shape (B,) or (B, 1) = ({batch},)"


def _metric_inputs(outputs: Any, batch: Mapping[str, Any], score_thr: float = 0.05, nms_iou: float = 0.5) -> tuple[Any, Any]:
    return outputs.detach().reshape(-1).float(), batch["value"].reshape(-1).float()


def _prediction_table(outputs: Mapping[str, Any], class_names: Sequence[str], split: str) -> Any:
    import pandas as pd

    return pd.DataFrame({"target": outputs["target"].numpy(), "pred": outputs["preds"].numpy()})


def _adapt_output(y: Any, adapter: Any, image_size: tuple[int, int]) -> Any:
    return adapter.tensor(y)


SPEC = register_task_type(TaskTypeSpec(
    name="regression", target="value", loss="smooth_l1", metrics="regression",
    output_kinds=("values",), description="one number per image", **hooks_in(globals()),
))
