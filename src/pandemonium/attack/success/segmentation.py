"""Semantic-segmentation attack success, against the ground truth, outside the patch area.

Pixels under the patch are not a success: the patch replaces them, so any model "misclassifies"
them. Every figure is measured outside the patch (``*_outside``) and, separately, inside it
(``*_inside``), always against the ground-truth mask (values outside ``[0, num_classes)`` are
ignored):

- ``pixel_accuracy_outside`` / ``_inside``: share of pixels labelled correctly by the scored arm;
- ``iou_outside.c<k>`` / ``iou_inside.c<k>``: per class, intersection (hits) over union (trials);
  mIoU is their mean over classes present (:func:`pandemonium.attack.evaluation.summarize_success`);
- ``pixels_fooled_outside`` (untargeted headline): among pixels outside the patch the control labels
  correctly, the share the scored arm labels wrongly;
- ``targeted_pixels_outside`` (with a target class): among pixels outside the patch whose true
  class is not the target, the share the scored arm labels as the target.
"""

from __future__ import annotations

import torch

from pandemonium.attack.success.base import (
    RowCounts,
    SuccessInputs,
    SuccessMetric,
    SuccessMetricError,
    patch_region,
)

__all__ = ["SegmentationSuccess"]


class SegmentationSuccess(SuccessMetric):
    """Pixel accuracy, per-class IoU and fooled-pixel rates outside (and inside) the patch."""

    names = ("pixels_fooled_outside", "targeted_pixels_outside", "pixel_accuracy_outside", "pixel_accuracy_inside")
    prefixes = ("iou_outside.c", "iou_inside.c")

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes

    def __call__(self, inputs: SuccessInputs) -> dict[str, RowCounts]:
        logits, control = inputs.outputs, inputs.control
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise SuccessMetricError(f"SegmentationSuccess: outputs must be logits (B, C, H, W), got {shape}")
        mask = inputs.targets.get("mask")
        if mask is None:
            raise SuccessMetricError("SegmentationSuccess: targets have no 'mask' (the ground-truth labels)")
        pred, pred_c = logits.argmax(1), control.to(logits.device).argmax(1)
        truth = torch.as_tensor(mask, device=pred.device).long()
        if truth.shape != pred.shape:
            raise SuccessMetricError(f"SegmentationSuccess: mask has shape {tuple(truth.shape)}, predictions "
                                     f"{tuple(pred.shape)}")
        classes = int(self.num_classes or logits.shape[1])
        valid = (truth >= 0) & (truth < classes)
        inside = patch_region(inputs.patch_mask, tuple(pred.shape), pred.device)
        outside = valid & ~inside
        inside = valid & inside
        correct = pred == truth

        def count(hit: torch.Tensor, where: torch.Tensor) -> RowCounts:
            return RowCounts.of((hit & where).flatten(1).sum(1), where.flatten(1).sum(1))

        out = {
            "pixel_accuracy_outside": count(correct, outside),
            "pixel_accuracy_inside": count(correct, inside),
            "pixels_fooled_outside": count(~correct, outside & (pred_c == truth)),
        }
        if inputs.target_class is not None:
            target = int(inputs.target_class)
            out["targeted_pixels_outside"] = count(pred == target, outside & (truth != target))
        for region, where in (("outside", outside), ("inside", inside)):
            for c in range(classes):
                is_p, is_t = (pred == c) & where, (truth == c) & where
                out[f"iou_{region}.c{c}"] = count(is_p & is_t, is_p | is_t)
        return out

    def headline(self, target_class: int | None = None) -> str:
        return "pixels_fooled_outside" if target_class is None else "targeted_pixels_outside"
