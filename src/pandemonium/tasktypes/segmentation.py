"""Semantic segmentation: logits ``(B, C, H, W)``; a patch succeeds by flipping predicted pixels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pandemonium.attack.success.segmentation import SegmentationSuccess
from pandemonium.tasktypes.base import TaskTypeSpec, hooks_in, register_task_type


def _head(in_channels: Sequence[int], num_classes: int, decoder_channels: int = 32, **_: Any) -> Any:
    from pandemonium.models.heads import SegmentationHead

    return SegmentationHead(in_channels, num_classes, decoder_channels)


def _output_fits(output: Any, num_classes: int, image_size: tuple[int, int], batch: int) -> bool:
    import torch

    return isinstance(output, torch.Tensor) and tuple(output.shape) == (batch, num_classes, *image_size)


def _expected_output(num_classes: int, image_size: tuple[int, int], batch: int) -> str:
    h, w = image_size
    return f"logits of shape (B, num_classes, H, W) = ({batch}, {num_classes}, {h}, {w})"


def _metric_inputs(outputs: Any, batch: Mapping[str, Any], score_thr: float = 0.05, nms_iou: float = 0.5) -> tuple[Any, Any]:
    return outputs.detach().argmax(dim=1), batch["mask"].long()


def _prediction_table(outputs: Mapping[str, Any], class_names: Sequence[str], split: str) -> dict[str, Any]:
    masks = outputs["preds"].numpy()
    return {"masks": masks.astype(np.uint8 if len(class_names) <= 256 else np.int16)}


def _report_predictions(outputs: Any, class_names: Sequence[str], threshold: float = 0.5) -> list[dict[str, Any]]:
    return [{"mask": mask.detach().cpu().numpy()} for mask in outputs.argmax(1)]


def _recognises(output: Any) -> bool:
    import torch

    return isinstance(output, torch.Tensor) and output.ndim == 4


def _adapt_output(y: Any, adapter: Any, image_size: tuple[int, int]) -> Any:
    """Maps resized to the image; a single sigmoid channel becomes two classes (background, foreground)."""
    import torch
    import torch.nn.functional as F

    y = adapter.tensor(y)
    if y.dim() == 3:  # (B, H, W): one map
        y = y.unsqueeze(1)
    if adapter.kind == "sigmoid":
        fg = torch.logit(y.clamp(adapter.eps, 1 - adapter.eps))
        y = torch.cat([torch.zeros_like(fg), fg], 1) if y.shape[1] == 1 else fg
    elif adapter.kind == "probabilities":
        y = torch.log(y.clamp_min(adapter.eps))
    if tuple(y.shape[-2:]) != tuple(image_size):
        y = F.interpolate(y, size=image_size, mode="bilinear", align_corners=False)
    return y


SPEC = register_task_type(TaskTypeSpec(
    name="semantic_segmentation", target="mask", loss="cross_entropy_dice", metrics="segmentation",
    output_kinds=("logits", "probabilities", "sigmoid"), attack_preset="segmentation",
    attack_losses=("SegmentationPixelFlip",), success_metric=SegmentationSuccess,
    description="one class per pixel", **hooks_in(globals()),
))
