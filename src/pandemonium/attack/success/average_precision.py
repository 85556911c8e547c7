"""mAP@0.5 of a detection evaluation with an interval from a bootstrap over scenes.

COCO's mAP is a corpus-level figure: it sorts every detection of every image by score. It still has
a sampling unit, the scene, and a bootstrap over scenes gives its interval. Recomputing COCOeval for
each of 1000 resamples would cost seconds per evaluation; it is not needed, because COCO matches
detections to ground truth per image and per class, so a resample only changes how many times each
image counts. :func:`ap50_matches` matches once (COCO's rules: per image and class the top
``max_detections`` by score, greedy in score order, each to the unmatched ground truth of highest
IoU >= 0.5); :func:`weighted_map50` then computes COCO's 101-point interpolated AP, averaged over the
classes that have ground truth, for any number of image weightings at once. With unit weights it
equals faster-coco-eval's mAP@0.5 (tested).

>>> import torch
>>> gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
>>> found = [{"boxes": gt[0], "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
>>> round(float(weighted_map50(ap50_matches(found, gt, [torch.tensor([0])]), np.ones((1, 1)))[0]), 6)
1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pandemonium.attack.statistics import CONFIDENCE_LEVEL, N_RESAMPLES, Interval, scene_bootstrap

__all__ = ["Ap50Matches", "ap50_matches", "map50_intervals", "weighted_map50"]

#: COCO's recall thresholds 0, 0.01, ..., 1
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Ap50Matches:
    """Per class: the detections in COCO's global order (``image``, ``true_positive``) and the ground
    truth count of every image (``gt_per_image``, ``(n_images,)``)."""

    image: dict[int, np.ndarray]
    true_positive: dict[int, np.ndarray]
    gt_per_image: dict[int, np.ndarray]
    n_images: int


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes ``a`` (n, 4) and ``b`` (m, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _np(value: Any, dtype: Any) -> np.ndarray:
    return torch.as_tensor(value).detach().cpu().numpy().astype(dtype)


def ap50_matches(detections: Sequence[Mapping[str, Any]], gt_boxes: Sequence[Any], gt_labels: Sequence[Any],
                 max_detections: int = 100, iou_threshold: float = 0.5) -> Ap50Matches:
    """Match every image's detections to its ground truth once, as COCOeval does at one IoU threshold.

    ``detections``: per image ``{"boxes" (xyxy), "scores", "labels"}``; ``gt_boxes`` / ``gt_labels`` per
    image (0-based labels).
    """
    n_images = len(gt_boxes)
    per_class: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    gt_counts: dict[int, np.ndarray] = {}
    for i, (det, boxes, labels) in enumerate(zip(detections, gt_boxes, gt_labels)):
        g_box, g_lab = _np(boxes, np.float64).reshape(-1, 4), _np(labels, np.int64).reshape(-1)
        d_box = _np(det["boxes"], np.float64).reshape(-1, 4)
        d_score, d_lab = _np(det["scores"], np.float64).reshape(-1), _np(det["labels"], np.int64).reshape(-1)
        for c in np.unique(g_lab):
            gt_counts.setdefault(int(c), np.zeros(n_images))[i] = float((g_lab == c).sum())
        for c in np.unique(d_lab):
            mine = np.flatnonzero(d_lab == c)
            mine = mine[np.argsort(-d_score[mine], kind="mergesort")][:max_detections]
            gts = g_box[g_lab == c]
            iou = _iou(d_box[mine], gts) if gts.size else np.zeros((mine.size, 0))
            taken = np.zeros(gts.shape[0], dtype=bool)
            hit = np.zeros(mine.size, dtype=bool)
            for d in range(mine.size):
                best, best_iou = -1, min(iou_threshold, 1 - 1e-10)
                for g in range(gts.shape[0]):  # COCO keeps the last ground truth at the highest IoU
                    if not taken[g] and iou[d, g] >= best_iou:
                        best, best_iou = g, iou[d, g]
                if best >= 0:
                    taken[best], hit[d] = True, True
            per_class.setdefault(int(c), []).append((np.full(mine.size, i), d_score[mine], hit))
    image, true_positive = {}, {}
    for c, parts in per_class.items():
        img = np.concatenate([p[0] for p in parts])
        order = np.argsort(-np.concatenate([p[1] for p in parts]), kind="mergesort")
        image[c], true_positive[c] = img[order], np.concatenate([p[2] for p in parts])[order]
    return Ap50Matches(image, true_positive, gt_counts, n_images)


def weighted_map50(matches: Ap50Matches, weights: np.ndarray) -> np.ndarray:
    """mAP@0.5 under image weights ``(R, n_images)`` (how often each image counts), one value per row;
    NaN where no class has ground truth."""
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    rows = weights.shape[0]
    total, classes = np.zeros(rows), np.zeros(rows)
    eps = np.spacing(1)
    for c, gt in matches.gt_per_image.items():
        n_gt = weights @ gt
        valid = n_gt > 0
        ap = np.zeros(rows)
        if c in matches.image and matches.image[c].size:
            w = weights[:, matches.image[c]]
            tp = np.cumsum(w * matches.true_positive[c], axis=1)
            fp = np.cumsum(w * ~matches.true_positive[c], axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = tp / n_gt[:, None]
            precision = tp / (tp + fp + eps)
            envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            for r in np.flatnonzero(valid):
                at = np.searchsorted(recall[r], RECALL_THRESHOLDS, side="left")
                inside = at < recall.shape[1]
                ap[r] = envelope[r, at[inside]].sum() / RECALL_THRESHOLDS.size
        total += np.where(valid, ap, 0.0)
        classes += valid
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(classes > 0, total / np.where(classes > 0, classes, 1), np.nan)


def _scene_weights(resampled: np.ndarray, n_scenes: int) -> np.ndarray:
    """Scene index resamples ``(R, n)`` -> how often each scene was drawn ``(R, n_scenes)``."""
    resampled = np.atleast_2d(resampled)
    offsets = resampled + n_scenes * np.arange(resampled.shape[0])[:, None]
    return np.bincount(offsets.ravel(), minlength=resampled.shape[0] * n_scenes).reshape(-1, n_scenes)


def map50_intervals(patched: Ap50Matches, control: Ap50Matches, scenes: Sequence[Any] | None = None,
                    confidence: float = CONFIDENCE_LEVEL, n_resamples: int = N_RESAMPLES,
                    seed: int = 0) -> dict[str, Interval]:
    """mAP@0.5 with the patch, without it (``control``, the same rows) and their paired difference,
    each with a percentile bootstrap interval over ``scenes`` (one id per image row; default: every
    row its own scene). Keys ``map50``, ``map50_control``, ``map50_diff_vs_control``."""
    n = patched.n_images
    labels = np.arange(n) if scenes is None else np.asarray(scenes).reshape(-1)
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    n_scenes = int(codes.max()) + 1 if n else 0

    def image_weights(resampled: np.ndarray) -> np.ndarray:
        return _scene_weights(resampled, n_scenes)[:, codes]

    statistics = {
        "map50": lambda idx: weighted_map50(patched, image_weights(idx)),
        "map50_control": lambda idx: weighted_map50(control, image_weights(idx)),
        "map50_diff_vs_control": lambda idx: (weighted_map50(patched, image_weights(idx))
                                              - weighted_map50(control, image_weights(idx))),
    }
    out = {}
    for key, statistic in statistics.items():
        value = float(statistic(np.arange(n_scenes))[0]) if n_scenes else float("nan")
        lo, hi = scene_bootstrap(lambda idx, f=statistic: f(idx).reshape(np.shape(idx)[:-1]), n_scenes,
                                 confidence, n_resamples, seed)
        out[key] = Interval(value, lo, hi, n, n_scenes, float(n), "bootstrap")
    return out
