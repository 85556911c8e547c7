"""A small single-stage, anchor-free detector (CenterNet-style on one stride level).

``forward`` returns the dense layout every detection loss in pandemonium consumes (DEVELOPERS.md):

* ``boxes``: ``(B, N, 4)`` xyxy in pixels, one box per grid cell,
* ``objectness``: ``(B, N)`` in [0, 1],
* ``class_scores``: ``(B, N, C)`` probabilities (softmax over classes),

with ``N = (H / stride) * (W / stride)``. Everything is differentiable with respect to the input image, so
"hide the objects" attacks can push ``objectness`` down directly. :func:`decode` turns the dense
layout into final predictions with a score threshold and class-aware NMS.

>>> import torch
>>> det = CenterDetector(num_classes=3, in_channels=3, preset="tiny")
>>> out = det(torch.rand(2, 3, 64, 64))
>>> out["boxes"].shape, out["objectness"].shape, out["class_scores"].shape
(torch.Size([2, 256, 4]), torch.Size([2, 256]), torch.Size([2, 256, 3]))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pandemonium.boxes import box_iou
from pandemonium.models.backbones import Normalize, SmallCNN, conv_bn_act

DETECTION_KEYS = ("boxes", "objectness", "class_scores")


class CenterDetector(nn.Module):
    """Backbone + top-down fusion to one stride + three 1x1 prediction branches.

    Each cell predicts an objectness probability, class probabilities, and distances (left, top, right,
    bottom) from its centre to the box edges, in units of the stride.

    Args:
        num_classes: object classes (background is not a class; low objectness means "nothing here").
        in_channels: image channels.
        mean, std: per-channel statistics used by the internal :class:`Normalize`.
        preset, width, depth: backbone settings (see :class:`SmallCNN`).
        stride: output stride of the prediction grid; must be one of the backbone's strides.
        head_channels: channels of the fused feature map.
        prior_prob: initial objectness, so training starts from "almost nothing everywhere" (focal-loss
            initialisation from RetinaNet, which keeps the first steps from being swamped by negatives).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        preset: str = "small",
        width: int | None = None,
        depth: int | None = None,
        stride: int = 4,
        head_channels: int = 64,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.normalize = Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)
        self.backbone = SmallCNN(in_channels, preset=preset, width=width, depth=depth)
        if stride not in self.backbone.strides:
            raise ValueError(f"CenterDetector: stride {stride} is not one of the backbone strides {self.backbone.strides}")
        self.stride = int(stride)
        self.level = self.backbone.strides.index(stride)
        used = self.backbone.out_channels[self.level :]
        self.laterals = nn.ModuleList(nn.Conv2d(c, head_channels, 1) for c in used)
        self.fuse = nn.Sequential(conv_bn_act(head_channels, head_channels), conv_bn_act(head_channels, head_channels))
        self.objectness_branch = nn.Conv2d(head_channels, 1, 1)
        self.class_branch = nn.Conv2d(head_channels, self.num_classes, 1)
        self.box_branch = nn.Conv2d(head_channels, 4, 1)
        nn.init.constant_(self.objectness_branch.bias, -torch.log(torch.tensor((1 - prior_prob) / prior_prob)).item())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(self.normalize(x))[self.level :]
        y = self.laterals[-1](features[-1])
        for lateral, feat in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            y = F.interpolate(y, size=feat.shape[-2:], mode="bilinear", align_corners=False) + lateral(feat)
        y = self.fuse(y)
        b, _, h, w = y.shape
        objectness = torch.sigmoid(self.objectness_branch(y)).flatten(1)  # (B, N)
        class_scores = torch.softmax(self.class_branch(y), dim=1).flatten(2).transpose(1, 2)  # (B, N, C)
        distances = F.softplus(self.box_branch(y)).flatten(2).transpose(1, 2) * self.stride  # (B, N, 4)
        centres = grid_centres(h, w, self.stride, device=x.device, dtype=distances.dtype)  # (N, 2)
        boxes = torch.cat([centres - distances[..., :2], centres + distances[..., 2:]], dim=-1)
        return {"boxes": boxes, "objectness": objectness, "class_scores": class_scores}


def grid_centres(h: int, w: int, stride: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel centres ``(h * w, 2)`` (x, y) of a ``h x w`` grid with the given stride, row-major."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * stride
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=-1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression; returns kept indices sorted by decreasing score.

    Written here because torchvision (whose compiled ``nms`` op is the usual choice) does not load with
    the CPU torch build this project pins; with a few hundred grid cells per image the O(N^2) IoU matrix
    is cheap.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    # the greedy pass walks rows of the overlap matrix one by one: on host booleans a step costs a
    # microsecond, on tensors several (evaluation runs this loop tens of thousands of times)
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS: boxes of different labels never suppress each other (coordinate-offset trick)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offsets = labels.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return nms(boxes + offsets, scores, iou_threshold)


def decode(
    outputs: dict[str, torch.Tensor],
    score_thr: float = 0.05,
    nms_iou: float = 0.5,
    max_detections: int = 100,
    image_size: tuple[int, int] | None = None,
    score_threshold: float | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Dense detector outputs -> per-image ``{"boxes": (K, 4), "scores": (K,), "labels": (K,)}``.

    The score of a cell is ``objectness * max(class_scores)``; cells under ``score_thr`` are dropped,
    the rest go through class-aware NMS and the best ``max_detections`` are kept. With ``image_size``
    (H, W) boxes are clipped to the image. ``score_threshold`` is an alias of ``score_thr``.
    """
    if score_threshold is not None:
        score_thr = score_threshold
    missing = [k for k in DETECTION_KEYS if k not in outputs]
    if missing:
        raise KeyError(f"decode: detector outputs lack {missing}; expected keys {list(DETECTION_KEYS)}")
    results = []
    with torch.no_grad():
        cls_prob, labels = outputs["class_scores"].max(dim=-1)
        scores = outputs["objectness"] * cls_prob
        boxes = outputs["boxes"]
        if image_size is not None:  # elementwise, so clipping the whole batch once equals clipping per image
            h, w = image_size
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w),
                                 boxes[..., 3].clamp(0, h)], dim=-1)
        for boxes_i, scores_i, labels_i, keep in zip(boxes, scores, labels, scores > score_thr):
            boxes_i, scores_i, labels_i = boxes_i[keep], scores_i[keep], labels_i[keep]
            kept = batched_nms(boxes_i, scores_i, labels_i, nms_iou)[:max_detections]
            results.append({"boxes": boxes_i[kept], "scores": scores_i[kept], "labels": labels_i[kept]})
    return results
