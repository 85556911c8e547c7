"""Object-detection attack success from ground-truth objects, after NMS at the score threshold.

Detections are decoded with :func:`pandemonium.models.detector.decode` (score = objectness x best
class probability, class-aware NMS) and kept at ``score >= score_threshold``. A ground-truth object
is **found** when a kept detection overlaps it with IoU >= ``iou_threshold`` (class-agnostic, as in
the vanishing-object literature: a relabelled object is still seen). Per row:

- ``object_recall``: found objects / ground-truth objects (scored on the control: the recall
  without a patch);
- ``object_vanished`` (headline): among the objects the control finds, the share the scored arm
  misses;
- ``patched_object_recall``: whether the object under the patch is found (trials: images whose
  patch lies on an object);
- ``patched_object_vanished``: per image whose patched object the control finds, whether the scored
  arm misses it.

The object under the patch is the ground-truth box holding the largest share of the patch box (at
least half of it). mAP@0.5 of a whole evaluation comes from :func:`map50` (faster-coco-eval, the same
evaluator as the model metrics), not from per-row counts.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from pandemonium.attack.success.base import RowCounts, SuccessInputs, SuccessMetric, SuccessMetricError
from pandemonium.boxes import box_iou

__all__ = ["DetectionSuccess", "map50", "patched_object_index"]

# Every scored arm is judged against the same control output, so an evaluation batch would decode the
# control once per arm; the last few decodings are kept, keyed by the very output tensors (alive and
# unmodified: weak references and version counters) and the thresholds.
_RECENT_SIZE = 4
_RECENT: list[tuple[tuple[weakref.ref, ...], tuple[int, ...], tuple[float, float], list[dict[str, torch.Tensor]]]] = []


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)


def patched_object_index(gt: torch.Tensor, patch_box: torch.Tensor | None, min_share: float = 0.5) -> int:
    """Index of the ground-truth box covering the largest share (>= ``min_share``) of the patch box; -1 if none."""
    if patch_box is None or gt.numel() == 0:
        return -1
    pb = patch_box.reshape(-1, 4)[0].to(gt)
    lt = torch.maximum(gt[:, :2], pb[:2])
    rb = torch.minimum(gt[:, 2:], pb[2:])
    share = (rb - lt).clamp(min=0).prod(-1) / _area(pb).clamp(min=1e-9)
    best = int(share.argmax())
    return best if float(share[best]) >= min_share else -1


class DetectionSuccess(SuccessMetric):
    """Ground-truth recall and vanishing rates with and without the patch (see the module docstring)."""

    names = ("object_vanished", "object_recall", "patched_object_vanished", "patched_object_recall")

    def __init__(self, score_threshold: float = 0.5, iou_threshold: float = 0.5, nms_iou: float = 0.5) -> None:
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.nms_iou = float(nms_iou)

    @classmethod
    def with_thresholds(cls, conf_threshold: float = 0.5, iou_threshold: float = 0.5) -> DetectionSuccess:
        return cls(score_threshold=conf_threshold, iou_threshold=iou_threshold)

    def detections(self, outputs: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per-image kept detections ``{"boxes", "scores", "labels"}`` after NMS."""
        from pandemonium.models.detector import decode

        if not isinstance(outputs, Mapping) or "boxes" not in outputs or "objectness" not in outputs:
            raise SuccessMetricError("DetectionSuccess: outputs must be the detector dict with 'boxes', 'objectness', "
                                     "'class_scores' (see DEVELOPERS.md)")
        settings = (self.score_threshold, self.nms_iou)
        tensors = tuple(outputs[k] for k in ("boxes", "objectness", "class_scores") if k in outputs)
        for refs, versions, cached_settings, cached in _RECENT:
            if cached_settings == settings and len(refs) == len(tensors) and all(
                    r() is t and v == t._version for r, v, t in zip(refs, versions, tensors)):
                return cached
        dets = decode(outputs, score_thr=self.score_threshold, nms_iou=self.nms_iou)
        kept = [{k: v[d["scores"] >= self.score_threshold] for k, v in d.items()} for d in dets]
        _RECENT.append((tuple(weakref.ref(t) for t in tensors), tuple(t._version for t in tensors), settings, kept))
        del _RECENT[:-_RECENT_SIZE]
        return kept

    def _found(self, det: Mapping[str, torch.Tensor], gt: torch.Tensor) -> torch.Tensor:
        if gt.numel() == 0 or det["boxes"].numel() == 0:
            return torch.zeros(gt.shape[0], dtype=torch.bool)
        return (box_iou(gt.float(), det["boxes"].float().cpu()) >= self.iou_threshold).any(dim=1)

    def __call__(self, inputs: SuccessInputs) -> dict[str, RowCounts]:
        gt_boxes = inputs.targets.get("boxes")
        if gt_boxes is None:
            raise SuccessMetricError("DetectionSuccess: targets have no 'boxes' (the ground-truth objects)")
        arm, control = self.detections(inputs.outputs), self.detections(inputs.control)
        if len(gt_boxes) != len(arm):
            raise SuccessMetricError(f"DetectionSuccess: {len(gt_boxes)} ground-truth lists for {len(arm)} images")
        patch_boxes = inputs.targets.get("patch_boxes")
        if isinstance(patch_boxes, Mapping):  # several patches: the first one's placement
            patch_boxes = next(iter(patch_boxes.values()))
        cols: dict[str, list[list[float]]] = {k: [[], []] for k in self.names}

        def add(key: str, hits: float, trials: float) -> None:
            cols[key][0].append(hits)
            cols[key][1].append(trials)

        for i, gt in enumerate(gt_boxes):
            gt = torch.as_tensor(gt).detach().float().cpu().reshape(-1, 4)
            found, found_c = self._found(arm[i], gt), self._found(control[i], gt)
            add("object_recall", float(found.sum()), float(gt.shape[0]))
            add("object_vanished", float((found_c & ~found).sum()), float(found_c.sum()))
            j = patched_object_index(gt, None if patch_boxes is None else torch.as_tensor(patch_boxes[i]).cpu())
            add("patched_object_recall", float(j >= 0 and found[j]), float(j >= 0))
            seen = j >= 0 and bool(found_c[j])
            add("patched_object_vanished", float(seen and not found[j]), float(seen))
        return {k: RowCounts.of(h, t) for k, (h, t) in cols.items()}


def map50(detections: Sequence[Mapping[str, torch.Tensor]], gt_boxes: Sequence[torch.Tensor],
          gt_labels: Sequence[torch.Tensor]) -> float:
    """COCO-style mAP at IoU 0.5 of decoded detections (faster-coco-eval, as in the model metrics).

    ``detections``: per image ``{"boxes", "scores", "labels"}``; ``gt_boxes`` / ``gt_labels`` per image.
    """
    from pandemonium.models.metrics import coco_map

    def np_(v: Any, dtype: Any = torch.float32) -> Any:
        return torch.as_tensor(v).detach().to(dtype).cpu().numpy()

    return coco_map([np_(d["boxes"]).reshape(-1, 4) for d in detections], [np_(d["scores"]) for d in detections],
                    [np_(d["labels"], torch.long) for d in detections], [np_(b).reshape(-1, 4) for b in gt_boxes],
                    [np_(lab, torch.long) for lab in gt_labels], iou_threshold=0.5)
