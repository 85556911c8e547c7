"""Training losses, one per task type, chosen through ``configs/loss`` (see ``CONFIGS_ROUTES``).

Every loss is an ``nn.Module`` called as ``loss(outputs, batch) -> dict[str, Tensor]`` with a scalar
``"loss"`` (what is optimised) plus scalar components that are only logged. ``batch`` is the collated
dict of the tasks layer (``"class"``, ``"classes"``, ``"mask"``, ``"boxes"``/``"labels"`` lists,
``"value"``).

The detection loss consumes the dense contract layout (``boxes`` / ``objectness`` / ``class_scores``,
DEVELOPERS.md) rather than raw logits, so it trains any detector that follows the contract on a
row-major grid, not just :class:`~pandemonium.models.detector.CenterDetector`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pandemonium.models.detector import grid_centres


class ClassificationLoss(nn.Module):
    """Cross entropy on logits ``(B, C)`` against ``batch["class"]``."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, outputs: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(outputs, batch["class"].long(), label_smoothing=self.label_smoothing)
        return {"loss": loss}


class MultilabelLoss(nn.Module):
    """Binary cross entropy with logits ``(B, C)`` against the 0/1 matrix ``batch["classes"]``."""

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, outputs: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        target = batch["classes"].to(outputs.dtype)
        pos_weight = None if self.pos_weight is None else torch.full_like(outputs[0], self.pos_weight)
        return {"loss": F.binary_cross_entropy_with_logits(outputs, target, pos_weight=pos_weight)}


class RegressionLoss(nn.Module):
    """Smooth-L1 (Huber) on values ``(B,)`` against ``batch["value"]``."""

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = beta

    def forward(self, outputs: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        target = batch["value"].to(outputs.dtype).reshape(outputs.shape[0], -1)
        return {"loss": F.smooth_l1_loss(outputs.reshape(outputs.shape[0], -1), target, beta=self.beta)}


class SegmentationLoss(nn.Module):
    """Pixel cross entropy plus soft Dice (the Dice term keeps small classes from being ignored).

    Args:
        dice_weight: weight of ``1 - mean soft Dice`` (0 disables it).
        ignore_index: mask value that does not count (e.g. 255 for "unlabelled").
    """

    def __init__(self, dice_weight: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index

    def forward(self, outputs: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        target = batch["mask"].long()
        ce = F.cross_entropy(outputs, target, ignore_index=self.ignore_index)
        result = {"loss": ce, "ce": ce.detach()}
        if self.dice_weight:
            valid = (target != self.ignore_index).unsqueeze(1).to(outputs.dtype)
            probs = outputs.softmax(dim=1) * valid
            one_hot = F.one_hot(target.clamp(0, outputs.shape[1] - 1), outputs.shape[1]).permute(0, 3, 1, 2)
            one_hot = one_hot.to(outputs.dtype) * valid
            inter = (probs * one_hot).sum(dim=(0, 2, 3))
            denom = probs.sum(dim=(0, 2, 3)) + one_hot.sum(dim=(0, 2, 3))
            dice = ((2 * inter + 1.0) / (denom + 1.0)).mean()
            result["loss"] = ce + self.dice_weight * (1 - dice)
            result["dice_loss"] = (1 - dice).detach()
        return result


def generalized_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Element-wise GIoU of matching xyxy boxes ``(K, 4)``."""
    area_p = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_t = (target[:, 2] - target[:, 0]).clamp(min=0) * (target[:, 3] - target[:, 1]).clamp(min=0)
    lt = torch.maximum(pred[:, :2], target[:, :2])
    rb = torch.minimum(pred[:, 2:], target[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (area_p + area_t - inter).clamp(min=1e-6)
    iou = inter / union
    hull = (torch.maximum(pred[:, 2:], target[:, 2:]) - torch.minimum(pred[:, :2], target[:, :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-6)


class DetectionLoss(nn.Module):
    """CenterNet-style loss on the dense detection layout.

    * objectness: penalty-reduced focal loss against a Gaussian heatmap that peaks (exactly 1) at the
      cell holding each box centre,
    * boxes: ``1 - GIoU`` at cells near a box centre (Gaussian >= ``region_threshold``), weighted by the
      Gaussian,
    * classes: negative log-likelihood of the box label at the same cells.

    The grid is taken to be row-major with a square stride inferred from ``N`` and the image size.

    Args:
        box_weight, class_weight: weights of the box and class terms (objectness has weight 1).
        sigma_scale: Gaussian sigma as a fraction of the box side.
        region_threshold: Gaussian value above which a cell learns the box and class of the object.
        alpha, beta: focal-loss exponents of CenterNet.
    """

    def __init__(
        self,
        box_weight: float = 2.0,
        class_weight: float = 1.0,
        sigma_scale: float = 0.15,
        region_threshold: float = 0.3,
        alpha: float = 2.0,
        beta: float = 4.0,
    ) -> None:
        super().__init__()
        self.box_weight = box_weight
        self.class_weight = class_weight
        self.sigma_scale = sigma_scale
        self.region_threshold = region_threshold
        self.alpha = alpha
        self.beta = beta

    @staticmethod
    def infer_grid(n: int, image_size: tuple[int, int]) -> tuple[int, int, int]:
        """(rows, cols, stride) of a row-major grid with ``n`` cells over ``image_size``."""
        h, w = image_size
        stride = int(round(math.sqrt(h * w / max(n, 1))))
        if stride < 1 or math.ceil(h / stride) * math.ceil(w / stride) != n:
            raise ValueError(
                f"DetectionLoss: cannot lay {n} cells on a square-stride grid over a {h}x{w} image; "
                "the detector must predict one box per cell of a row-major grid"
            )
        return math.ceil(h / stride), math.ceil(w / stride), stride

    def targets(self, boxes: torch.Tensor, centres: torch.Tensor, stride: int, cols: int):
        """Heatmap ``(N,)``, centre-cell mask ``(N,)``, assigned box index ``(N,)`` and region weight ``(N,)``."""
        n = centres.shape[0]
        if boxes.numel() == 0:
            zeros = torch.zeros(n, device=centres.device, dtype=centres.dtype)
            return zeros, zeros.bool(), torch.zeros(n, dtype=torch.long, device=centres.device), zeros
        gc = (boxes[:, :2] + boxes[:, 2:]) / 2  # (M, 2)
        size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0)
        sigma = (size * self.sigma_scale).clamp(min=stride / 2)
        d = (centres[:, None, :] - gc[None, :, :]) / sigma[None]
        gauss = torch.exp(-0.5 * (d**2).sum(-1))  # (N, M)
        centre_cell = (gc[:, 1] // stride).long() * cols + (gc[:, 0] // stride).long()
        centre_cell = centre_cell.clamp(0, n - 1)
        gauss[centre_cell, torch.arange(len(boxes), device=boxes.device)] = 1.0
        heat, assigned = gauss.max(dim=1)
        pos = torch.zeros(n, dtype=torch.bool, device=centres.device)
        pos[centre_cell] = True
        heat = torch.where(pos, torch.ones_like(heat), heat.clamp(max=0.999))
        region = torch.where(heat >= self.region_threshold, heat, torch.zeros_like(heat))
        return heat, pos, assigned, region

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        pred_boxes, obj, cls = outputs["boxes"], outputs["objectness"], outputs["class_scores"]
        image_size = tuple(batch["image"].shape[-2:])
        rows, cols, stride = self.infer_grid(obj.shape[1], image_size)
        centres = grid_centres(rows, cols, stride, device=obj.device, dtype=pred_boxes.dtype)
        eps = 1e-4
        obj = obj.clamp(eps, 1 - eps)
        focal_sum = obj.new_zeros(())
        box_sum = obj.new_zeros(())
        cls_sum = obj.new_zeros(())
        num_pos = 0
        region_sum = obj.new_zeros(())
        for i in range(obj.shape[0]):
            gt_boxes = batch["boxes"][i].to(pred_boxes)
            gt_labels = batch["labels"][i].to(obj.device).long()
            heat, pos, assigned, region = self.targets(gt_boxes, centres, stride, cols)
            p = obj[i]
            pos_term = -torch.log(p) * (1 - p) ** self.alpha * pos
            neg_term = -torch.log(1 - p) * p**self.alpha * (1 - heat) ** self.beta * (~pos)
            focal_sum = focal_sum + pos_term.sum() + neg_term.sum()
            num_pos += int(pos.sum())
            cells = region > 0
            if cells.any():
                w = region[cells]
                giou = generalized_iou(pred_boxes[i][cells], gt_boxes[assigned[cells]])
                box_sum = box_sum + ((1 - giou) * w).sum()
                nll = -torch.log(cls[i][cells].clamp(min=eps).gather(1, gt_labels[assigned[cells]][:, None]).squeeze(1))
                cls_sum = cls_sum + (nll * w).sum()
                region_sum = region_sum + w.sum()
        objectness = focal_sum / max(num_pos, 1)
        box = box_sum / region_sum.clamp(min=1.0)
        classes = cls_sum / region_sum.clamp(min=1.0)
        loss = objectness + self.box_weight * box + self.class_weight * classes
        return {"loss": loss, "objectness": objectness.detach(), "box": box.detach(), "classes": classes.detach()}
