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

Decoding and matching run on NumPy arrays for the whole batch at once
(:func:`~pandemonium.models.detector.decode_host`, :func:`~pandemonium.boxes.box_iou_np`): with a few
boxes per image, per-image torch ops would be a few microseconds of dispatch each for almost no
arithmetic. Every step is the IEEE float32 operation of the torch formulas it replaced, so the counts
are theirs bit for bit (tests/models/test_detection_host.py keeps those formulas as the reference).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pandemonium.attack.success.base import RowCounts, SuccessInputs, SuccessMetric, SuccessMetricError
from pandemonium.boxes import box_iou_np, host_array

__all__ = ["DetectionSuccess", "map50", "patched_object_index"]

# Every scored arm is judged against the same control output, so an evaluation batch would decode the
# control once per arm; the last few decodings are kept, keyed by the very output tensors (alive and
# unmodified: weak references and version counters) and the thresholds.
_RECENT_SIZE = 4


class _Decoded:
    """One output's kept detections: host arrays for the scoring, the tensors made when first asked for."""

    __slots__ = ("host", "tensors")

    def __init__(self, host: list[dict[str, np.ndarray]]) -> None:
        self.host = host
        self.tensors: list[dict[str, torch.Tensor]] | None = None


_RECENT: list[tuple[tuple[weakref.ref, ...], tuple[int, ...], tuple[float, float], _Decoded]] = []


def patched_object_index(gt: torch.Tensor, patch_box: torch.Tensor | None, min_share: float = 0.5) -> int:
    """Index of the ground-truth box covering the largest share (>= ``min_share``) of the patch box; -1 if none."""
    if patch_box is None or gt.numel() == 0:
        return -1
    pb = host_array(patch_box.reshape(-1, 4)[0].to(gt))
    return int(_patched_objects(host_array(gt)[None], np.array([gt.shape[0]]), pb[None], min_share)[0])


def _patched_objects(gt: np.ndarray, count: np.ndarray, patch_box: np.ndarray, min_share: float = 0.5) -> np.ndarray:
    """:func:`patched_object_index` of a batch of host arrays: ``gt`` ``(B, G, 4)`` whose first ``count``
    ``(B,)`` rows are boxes, ``patch_box`` ``(B, 4)`` in ``gt``'s dtype -> ``(B,)`` indices, -1 for none."""
    b, g = gt.shape[:2]
    if g == 0:
        return np.full(b, -1)
    zero = gt.dtype.type(0)
    with np.errstate(all="ignore"):  # padding rows may be NaN
        wh = np.maximum(np.minimum(gt[..., 2:], patch_box[:, None, 2:]) - np.maximum(gt[..., :2], patch_box[:, None, :2]),
                        zero)
        pwh = np.maximum(patch_box[:, 2:] - patch_box[:, :2], zero)
        share = wh[..., 0] * wh[..., 1] / np.maximum(pwh[:, 0] * pwh[:, 1], gt.dtype.type(1e-9))[:, None]
    share[np.arange(g) >= count[:, None]] = -np.inf  # padding is never the best
    best = share.argmax(axis=1)
    # compared as a Python float, as before
    enough = share[np.arange(b), best].astype(np.float64) >= min_share
    return np.where((count > 0) & enough, best, -1)


def _padded(boxes: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image float32 boxes ``(K_i, 4)`` as one ``(B, max K_i, 4)`` array, NaN past each image's
    boxes (a NaN box overlaps nothing), and the counts ``K_i``."""
    count = np.fromiter(map(len, boxes), np.int64, len(boxes))
    out = np.full((len(boxes), count.max(initial=0), 4), np.nan, np.float32)
    if len(boxes):
        out[np.arange(out.shape[1]) < count[:, None]] = np.concatenate(boxes)
    return out, count


def _host_float(boxes: Any) -> np.ndarray:
    """Ground-truth or patch boxes as a float32 host array, converted as ``torch.as_tensor(boxes).float()``."""
    if isinstance(boxes, np.ndarray) and boxes.dtype == np.float32:
        return boxes
    t = boxes if isinstance(boxes, torch.Tensor) else torch.as_tensor(boxes)
    return host_array(t if t.dtype == torch.float32 else t.float())


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
        from pandemonium.models.detector import host_detections_to_torch

        decoded = self._decoded(outputs)
        if decoded.tensors is None:
            decoded.tensors = host_detections_to_torch(decoded.host, dict(outputs))
        return decoded.tensors

    def _decoded(self, outputs: Mapping[str, torch.Tensor]) -> _Decoded:
        from pandemonium.models.detector import decode_host

        if not isinstance(outputs, Mapping) or "boxes" not in outputs or "objectness" not in outputs:
            raise SuccessMetricError("DetectionSuccess: outputs must be the detector dict with 'boxes', 'objectness', "
                                     "'class_scores' (see DEVELOPERS.md)")
        settings = (self.score_threshold, self.nms_iou)
        tensors = tuple(outputs[k] for k in ("boxes", "objectness", "class_scores") if k in outputs)
        for refs, versions, cached_settings, cached in _RECENT:
            if cached_settings == settings and len(refs) == len(tensors) and all(
                    r() is t and v == t._version for r, v, t in zip(refs, versions, tensors)):
                return cached
        # decoding keeps scores > score_threshold, so every detection it returns is kept here
        decoded = _Decoded(decode_host(dict(outputs), score_thr=self.score_threshold, nms_iou=self.nms_iou))
        _RECENT.append((tuple(weakref.ref(t) for t in tensors), tuple(t._version for t in tensors), settings, decoded))
        del _RECENT[:-_RECENT_SIZE]
        return decoded

    def _found(self, dets: Sequence[Mapping[str, np.ndarray]], gt: np.ndarray) -> np.ndarray:
        """``(B, G)``: is each ground-truth box of ``gt`` (float32 ``(B, G, 4)``, NaN rows as padding)
        overlapped by a kept detection with IoU >= ``iou_threshold``."""
        boxes, _ = _padded([d["boxes"].astype(np.float32, copy=False) for d in dets])
        # one (B, G, D) IoU for the batch: the padding is NaN, whose IoU is NaN and never counts
        return (box_iou_np(gt, boxes) >= np.float32(self.iou_threshold)).any(axis=-1)  # in float32, as torch compares

    def __call__(self, inputs: SuccessInputs) -> dict[str, RowCounts]:
        gt_boxes = inputs.targets.get("boxes")
        if gt_boxes is None:
            raise SuccessMetricError("DetectionSuccess: targets have no 'boxes' (the ground-truth objects)")
        arm, control = self._decoded(inputs.outputs).host, self._decoded(inputs.control).host
        if len(gt_boxes) != len(arm):
            raise SuccessMetricError(f"DetectionSuccess: {len(gt_boxes)} ground-truth lists for {len(arm)} images")
        n = len(arm)
        gt, count = _padded([_host_float(g).reshape(-1, 4) for g in gt_boxes])
        found, found_c = self._found(arm, gt), self._found(control, gt)
        patch_boxes = inputs.targets.get("patch_boxes")
        if isinstance(patch_boxes, Mapping):  # several patches: the first one's placement
            patch_boxes = next(iter(patch_boxes.values()))
        if patch_boxes is None:
            j = np.full(n, -1)
        else:
            host = _host_float(patch_boxes) if isinstance(patch_boxes, torch.Tensor) else patch_boxes  # one conversion
            rows = [_host_float(host[i]).reshape(-1, 4) for i in range(n)]
            # an image without objects needs no patch box (its object index is -1 whatever the box)
            first = np.stack([r[0] if count[i] else np.full(4, np.nan, np.float32) for i, r in enumerate(rows)]
                             ) if n else np.zeros((0, 4), np.float32)
            j = _patched_objects(gt, count, first)
        on_object = j >= 0
        if gt.shape[1]:
            found_j = on_object & found[np.arange(n), np.maximum(j, 0)]
            seen = on_object & found_c[np.arange(n), np.maximum(j, 0)]
        else:  # no image has objects
            found_j = seen = on_object
        cols = {"object_vanished": ((found_c & ~found).sum(1), found_c.sum(1)),
                "object_recall": (found.sum(1), count),
                "patched_object_vanished": (seen & ~found_j, seen),
                "patched_object_recall": (found_j, on_object)}
        return {k: RowCounts.of(*cols[k]) for k in self.names}


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
