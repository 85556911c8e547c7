"""Metrics per task type: torchmetrics where it has them, COCO mAP through faster-coco-eval.

``metric_inputs(task_type, outputs, batch)`` turns model outputs and a batch into the ``(preds, target)``
pair every metric of that task type is updated with, so the Lightning module, the test mode's
bootstrap and the evaluate layer share one convention (each ``TaskTypeSpec.metric_inputs``):

* classification: ``(logits (B, C), class (B,))``; multilabel: ``(logits (B, C), classes (B, C))``,
* segmentation: ``(predicted mask (B, H, W), mask (B, H, W))`` (argmax, so metric states stay small),
* detection: ``(list of {"boxes", "scores", "labels"}, list of {"boxes", "labels"})``,
* regression: ``(values (B,), value (B,))``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from pandemonium.tasktypes import task_type_spec


class DetectionMAP(Metric):
    """COCO-style mean average precision of boxes, computed with ``faster_coco_eval``.

    torchmetrics' own ``MeanAveragePrecision`` needs torchvision, which does not load with the CPU torch
    this project pins, so this metric keeps the same update contract and hands the accumulated
    detections to faster-coco-eval (a maintained, C++-backed COCO evaluator).

    Args:
        iou_threshold: ``0.5`` for mAP@0.5; ``None`` for the COCO mean over IoU 0.5:0.95.
        max_detections: detections per image considered.

    >>> m = DetectionMAP()
    >>> m.update([{"boxes": torch.tensor([[0., 0, 10, 10]]), "scores": torch.tensor([.9]),
    ...            "labels": torch.tensor([0])}], [{"boxes": torch.tensor([[0., 0, 10, 10]]),
    ...            "labels": torch.tensor([0])}])
    >>> round(float(m.compute()), 3)
    1.0
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, iou_threshold: float | None = 0.5, max_detections: int = 100, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.iou_threshold = iou_threshold
        self.max_detections = max_detections
        self.add_state("pred_boxes", default=[], dist_reduce_fx="cat")
        self.add_state("pred_scores", default=[], dist_reduce_fx="cat")
        self.add_state("pred_labels", default=[], dist_reduce_fx="cat")
        self.add_state("gt_boxes", default=[], dist_reduce_fx="cat")
        self.add_state("gt_labels", default=[], dist_reduce_fx="cat")

    def update(self, preds: list[dict[str, torch.Tensor]], target: list[dict[str, torch.Tensor]]) -> None:
        if len(preds) != len(target):
            raise ValueError(f"DetectionMAP: {len(preds)} predictions for {len(target)} targets")
        for p, t in zip(preds, target):
            self.pred_boxes.append(p["boxes"].detach().float().reshape(-1, 4))
            self.pred_scores.append(p["scores"].detach().float().reshape(-1))
            self.pred_labels.append(p["labels"].detach().long().reshape(-1))
            self.gt_boxes.append(t["boxes"].detach().float().reshape(-1, 4))
            self.gt_labels.append(t["labels"].detach().long().reshape(-1))

    def compute(self) -> torch.Tensor:
        return torch.tensor(
            coco_map(
                [b.cpu().numpy() for b in self.pred_boxes],
                [s.cpu().numpy() for s in self.pred_scores],
                [lab.cpu().numpy() for lab in self.pred_labels],
                [b.cpu().numpy() for b in self.gt_boxes],
                [lab.cpu().numpy() for lab in self.gt_labels],
                iou_threshold=self.iou_threshold,
                max_detections=self.max_detections,
            ),
            dtype=torch.float32,
        )


def coco_map(
    pred_boxes: list[np.ndarray],
    pred_scores: list[np.ndarray],
    pred_labels: list[np.ndarray],
    gt_boxes: list[np.ndarray],
    gt_labels: list[np.ndarray],
    iou_threshold: float | None = 0.5,
    max_detections: int = 100,
) -> float:
    """COCO bbox mAP over images given as parallel per-image arrays (xyxy pixels, 0-based labels).

    Returns 0.0 when there are no ground-truth boxes at all (nothing can be found) and 0.0 when nothing
    was detected although objects exist.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    images, annotations, detections = [], [], []
    categories = set()
    for img_id, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels), start=1):
        images.append({"id": img_id, "width": 1, "height": 1})
        for box, label in zip(boxes, labels):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": int(label) + 1,  # COCO category ids start at 1
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
            categories.add(int(label) + 1)
    for img_id, (boxes, scores, labels) in enumerate(zip(pred_boxes, pred_scores, pred_labels), start=1):
        for box, score, label in zip(boxes, scores, labels):
            detections.append(
                {
                    "image_id": img_id,
                    "category_id": int(label) + 1,
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "score": float(score),
                }
            )
            categories.add(int(label) + 1)
    if not annotations or not detections:
        return 0.0
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in sorted(categories)],
    }
    gt.createIndex()
    dt = gt.loadRes(detections)
    evaluator = COCOeval_faster(gt, dt, iouType="bbox", print_function=lambda *args, **kwargs: None)
    if iou_threshold is not None:
        evaluator.params.iouThrs = np.array([float(iou_threshold)])
    evaluator.params.maxDets = [1, 10, max_detections]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    value = float(evaluator.stats[0])
    return max(value, 0.0)  # COCO reports -1 for "undefined"; treat it as nothing found


def metric_inputs(task_type: Any, outputs: Any, batch: dict, score_thr: float = 0.05, nms_iou: float = 0.5) -> tuple[Any, Any]:
    """``(preds, target)`` for the metrics of ``task_type`` from model ``outputs`` and a collated ``batch``
    (``TaskTypeSpec.metric_inputs``)."""
    convert = task_type_spec(task_type).need("metric_inputs")
    return convert(outputs, batch, score_thr=score_thr, nms_iou=nms_iou)


def _take(values: Any, index: np.ndarray) -> Any:
    if isinstance(values, torch.Tensor):
        return values[torch.as_tensor(index, dtype=torch.long)]
    return [values[i] for i in index]


def bootstrap_metrics(
    metrics: Any,
    preds: Any,
    target: Any,
    n_boot: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Point estimates and percentile bootstrap confidence intervals of every metric in ``metrics``.

    ``metrics`` is a torchmetrics ``MetricCollection`` (or ``Metric``); ``preds`` / ``target`` hold one
    entry per sample (tensors indexed along dim 0, or lists). Resampling draws samples with replacement
    from a ``numpy.random.Generator`` seeded with ``seed``, so the intervals are reproducible.
    Returns ``{name: {"value", "low", "high", "std"}}``.

    >>> from torchmetrics.classification import MulticlassAccuracy
    >>> out = bootstrap_metrics(MulticlassAccuracy(num_classes=2, average="micro"), torch.tensor([0, 1, 1, 0]),
    ...                         torch.tensor([0, 1, 0, 0]), n_boot=50)
    >>> out["value"]["value"]
    0.75
    """
    n = len(preds)
    if n == 0:
        raise ValueError("bootstrap_metrics: no samples to evaluate")
    if not 0 < confidence < 1:
        raise ValueError(f"bootstrap_metrics: confidence must be in (0, 1), got {confidence}")

    def compute(p: Any, t: Any) -> dict[str, float]:
        metrics.reset()
        metrics.update(p, t)
        out = metrics.compute()
        metrics.reset()
        if isinstance(out, torch.Tensor):
            out = {"value": out}
        return {k: float(v) for k, v in out.items()}

    point = compute(preds, target)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(int(n_boot)):
        index = rng.integers(0, n, size=n)
        for k, v in compute(_take(preds, index), _take(target, index)).items():
            samples[k].append(v)
    alpha = (1 - confidence) / 2
    result = {}
    for k, v in point.items():
        draws = np.asarray(samples[k], dtype=float)
        if draws.size:
            low, high, std = float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha)), float(draws.std())
        else:
            low = high = v
            std = 0.0
        result[k] = {"value": v, "low": low, "high": high, "std": std}
    return result
