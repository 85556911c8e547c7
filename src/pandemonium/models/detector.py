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

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pandemonium.boxes import box_iou_np, host_array
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
    is cheap. Computed on the host, like :func:`decode_host`.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return _nms_one(host_array(boxes), scores, iou_threshold)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS: boxes of different labels never suppress each other (coordinate-offset trick)."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    count = np.array([len(boxes)])
    return _nms_one(_class_offset(host_array(boxes)[None], host_array(labels)[None], count)[0], scores, iou_threshold)


def _nms_one(boxes: np.ndarray, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """:func:`_nms_rows` of one image's host ``boxes`` ``(K, 4)``, kept indices on ``scores``' device."""
    scores_h = host_array(scores)[None]
    (kept,) = _nms_rows(boxes[None], scores_h, np.array([scores_h.shape[1]]), iou_threshold,
                        lambda r: _torch_order(scores))
    return torch.from_numpy(kept).to(scores.device)


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
    (H, W) boxes are clipped to the image. ``score_threshold`` is an alias of ``score_thr``. The
    tensors are on the outputs' devices, in their dtypes (:func:`decode_host` gives NumPy arrays).
    """
    if score_threshold is not None:
        score_thr = score_threshold
    return host_detections_to_torch(decode_host(outputs, score_thr, nms_iou, max_detections, image_size), outputs)


def decode_host(
    outputs: dict[str, torch.Tensor],
    score_thr: float = 0.05,
    nms_iou: float = 0.5,
    max_detections: int = 100,
    image_size: tuple[int, int] | None = None,
) -> list[dict[str, np.ndarray]]:
    """:func:`decode` with NumPy arrays out, for callers that go on working on the host.

    The batch-wide steps (scores, clipping, the threshold) are torch ops on the whole batch. The
    per-image ones (selection, class offsets, IoU, greedy suppression) are NumPy on one host copy of
    the batch, done for images of similar detection counts at once (each padded to the largest of its
    group): per image they would be a few dozen torch ops of a few microseconds' dispatch each on a
    handful of boxes. The results are the per-image torch implementation's bits: every step is the
    same IEEE operation in the same dtype (see :mod:`pandemonium.boxes`), padding never mixes into an
    image's values, and boxes with equal scores are ordered as torch's ``argsort`` orders them.
    Outputs in bfloat16, which NumPy lacks, are worked on in float32.
    """
    missing = [k for k in DETECTION_KEYS if k not in outputs]
    if missing:
        raise KeyError(f"decode: detector outputs lack {missing}; expected keys {list(DETECTION_KEYS)}")
    with torch.no_grad():
        cls_prob, labels = outputs["class_scores"].max(dim=-1)
        scores = outputs["objectness"] * cls_prob
        boxes = outputs["boxes"]
        if image_size is not None:  # elementwise, so clipping the whole batch once equals clipping per image
            h, w = image_size
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w),
                                 boxes[..., 3].clamp(0, h)], dim=-1)
        above = scores > score_thr
    boxes_h, scores_h, labels_h, above_h = host_array(boxes), host_array(scores), host_array(labels), host_array(above)
    count = above_h.sum(axis=1)
    _, cells = np.nonzero(above_h)  # row by row: each image's kept cells in index order
    start = np.cumsum(count) - count
    results: list[dict[str, np.ndarray] | None] = [None] * len(count)
    for group in _similar_counts(count):
        c = count[group]
        pos = np.arange(c.max())
        # (G, K) the group's kept cells, row r's first c[r] real, the rest repeat a real cell (any finite box)
        cell = cells[np.where(pos < c[:, None], start[group, None] + pos, start[group, None])]
        image = group[:, None]
        bx, sc, lb = boxes_h[image, cell], scores_h[image, cell], labels_h[image, cell]
        # equal scores are ordered by torch's sort on the outputs' device, as they were when NMS ran there
        kept = _nms_rows(_class_offset(bx, lb, c), sc, c, nms_iou,
                         lambda r, sc=sc, c=c: _torch_order(torch.from_numpy(sc[r, : c[r]]).to(scores.device)))
        for r, i in enumerate(group):
            k = kept[r][:max_detections]
            results[i] = {"boxes": bx[r, k], "scores": sc[r, k], "labels": lb[r, k]}
    return [d if d is not None else {"boxes": np.empty((0, 4), boxes_h.dtype), "scores": np.empty(0, scores_h.dtype),
                                     "labels": np.empty(0, labels_h.dtype)} for d in results]


def host_detections_to_torch(
    detections: Sequence[dict[str, np.ndarray]], outputs: dict[str, torch.Tensor]
) -> list[dict[str, torch.Tensor]]:
    """:func:`decode_host`'s arrays for ``outputs`` as the tensors :func:`decode` returns: on the devices
    and in the dtypes of the outputs they came from (CPU tensors share the arrays' memory)."""
    kinds = {"boxes": (outputs["boxes"].dtype, outputs["boxes"].device),
             "scores": (torch.promote_types(outputs["objectness"].dtype, outputs["class_scores"].dtype),
                        outputs["objectness"].device),
             "labels": (torch.long, outputs["class_scores"].device)}
    # the arrays are in these dtypes but for bfloat16 (worked on in float32)
    moved = {k for k, (dtype, device) in kinds.items() if device.type != "cpu" or dtype == torch.bfloat16}
    if not moved or not detections:
        return [{k: torch.from_numpy(v) for k, v in d.items()} for d in detections]
    # one transfer per key for the whole batch rather than one per image
    sizes = [len(d["scores"]) for d in detections]
    parts = {k: (torch.from_numpy(np.concatenate([d[k] for d in detections])).to(dtype=dtype, device=device).split(sizes)
                 if k in moved else [torch.from_numpy(d[k]) for d in detections]) for k, (dtype, device) in kinds.items()}
    return [{k: parts[k][i] for k in kinds} for i in range(len(detections))]


def _torch_order(scores: torch.Tensor) -> np.ndarray:
    return scores.argsort(descending=True).cpu().numpy()


# padded IoU work of one group of images at most, in elements (each (G, K, K) step of a group is one array)
_GROUP_ELEMENTS = 1 << 20


def _similar_counts(count: np.ndarray) -> list[np.ndarray]:
    """Indices of the images with detections, grouped by ``ceil(log2(count))`` (so padding to a group's
    largest count at most quadruples the K x K work) and split to at most ``_GROUP_ELEMENTS``."""
    images = np.flatnonzero(count)
    level = np.ceil(np.log2(count[images]))
    groups = []
    for v in np.unique(level):
        group = images[level == v]
        size = max(1, _GROUP_ELEMENTS // int(count[group].max()) ** 2)
        groups += [group[i : i + size] for i in range(0, len(group), size)]
    return groups


def _class_offset(boxes: np.ndarray, labels: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``boxes`` ``(G, K, 4)`` shifted by ``label * (max coordinate + 1)`` of their image (the first
    ``count`` rows of each are its boxes), so boxes of different labels do not overlap."""
    real = np.arange(boxes.shape[1]) < count[:, None]
    top = (boxes if real.all() else np.where(real[..., None], boxes, boxes.dtype.type(-np.inf))).max(axis=(1, 2))
    return boxes + labels.astype(boxes.dtype)[..., None] * (top + boxes.dtype.type(1))[:, None, None]


def _nms_rows(boxes: np.ndarray, scores: np.ndarray, count: np.ndarray, iou_threshold: float,
              tie_order: Callable[[int], np.ndarray]) -> list[np.ndarray]:
    """Greedy NMS of several images at once: ``boxes`` ``(G, K, 4)`` and ``scores`` ``(G, K)``, of which
    the first ``count[r]`` of row ``r`` are real (the rest finite filler). Returns per image the kept
    positions by decreasing score; where an image's scores are not all distinct, in the order
    ``tie_order(r)`` gives, torch's (see below)."""
    real = np.arange(scores.shape[1]) < count[:, None]
    key = scores if real.all() else np.where(real, scores, scores.dtype.type(-np.inf))
    order = np.argsort(-key, axis=1, kind="stable")
    ranked = np.take_along_axis(key, order, axis=1)
    distinct = ((ranked[:, 1:] < ranked[:, :-1]) | ~real[:, 1:]).all(axis=1) & ((order < count[:, None]) | ~real).all(axis=1)
    for r in np.flatnonzero(~distinct):
        # equal scores (or NaN): torch's CPU sort is not stable (above 16 elements on AVX512 machines it puts
        # equal values in an order of its own), and which of two overlapping equal-score boxes NMS keeps
        # depends on that order, so take torch's
        order[r, : count[r]] = tie_order(int(r))
        order[r, count[r] :] = np.arange(count[r], scores.shape[1])
    ranked_boxes = np.take_along_axis(boxes, order[..., None], axis=1)
    iou = box_iou_np(ranked_boxes, ranked_boxes)
    over = iou > iou.dtype.type(iou_threshold)  # torch compares a tensor with a Python float in the tensor's dtype
    keep = np.zeros(order.shape, dtype=bool)
    suppressed = np.zeros(order.shape, dtype=bool)
    for i in range(order.shape[1]):  # the greedy pass, every image's i-th box at once
        keep[:, i] = kept = real[:, i] & ~suppressed[:, i]
        suppressed |= over[:, i] & kept[:, None]
    return [order[r, keep[r]] for r in range(len(order))]
