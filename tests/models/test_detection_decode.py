"""Greedy NMS against a plain reference, and the reuse of decoded detections across scored arms."""

from __future__ import annotations

import torch

from pandemonium.attack.success.detection import DetectionSuccess
from pandemonium.boxes import box_iou
from pandemonium.models.detector import decode, nms


def _reference_nms(boxes, scores, threshold):
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep = []
    for i in order:
        if all(float(box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0]) <= threshold for j in keep):
            keep.append(i)
    return keep


def test_nms_keeps_what_the_textbook_greedy_pass_keeps():
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        xy = torch.rand(60, 2, generator=g) * 12
        boxes = torch.cat([xy, xy + 4 + torch.rand(60, 2, generator=g) * 12], dim=1)
        scores = torch.rand(60, generator=g)
        kept = nms(boxes, scores, 0.4 + 0.1 * trial).tolist()
        assert kept == _reference_nms(boxes, scores, 0.4 + 0.1 * trial)
        assert 0 < len(kept) < 60


def _outputs(seed, batch=3, cells=64):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, cells, 2, generator=g) * 48
    return {"boxes": torch.cat([xy, xy + 4 + torch.rand(batch, cells, 2, generator=g) * 10], dim=-1),
            "objectness": torch.rand(batch, cells, generator=g),
            "class_scores": torch.softmax(torch.randn(batch, cells, 3, generator=g), dim=-1)}


def test_decode_clips_like_per_image_clipping():
    out = _outputs(1)
    out["boxes"] = out["boxes"] * 1.5 - 10  # boxes over every edge
    dets = decode(out, score_thr=0.1, image_size=(40, 50))
    for det in dets:
        assert det["boxes"].numel() and float(det["boxes"].min()) >= 0
        assert float(det["boxes"][:, 2].max()) <= 50 and float(det["boxes"][:, 3].max()) <= 40


def test_detections_are_reused_only_for_the_same_unchanged_outputs():
    metric = DetectionSuccess(score_threshold=0.3)
    out = _outputs(2)
    first = metric.detections(out)
    assert metric.detections(out) is first  # the control output scored again: not decoded again
    assert metric.detections(dict(out)) is first  # another dict around the same tensors
    copy = {k: v.clone() for k, v in out.items()}
    again = metric.detections(copy)
    assert again is not first and all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(again, first))
    out["objectness"].mul_(0.0)  # edited in place: decoded anew, and nothing survives the threshold
    assert all(d["boxes"].numel() == 0 for d in metric.detections(out))
    assert DetectionSuccess(score_threshold=0.6).detections(copy) is not again  # other thresholds
