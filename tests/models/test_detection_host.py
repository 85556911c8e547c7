"""Detection decoding and scoring on host arrays give the same bits as the torch code they replaced.

The ``_reference_*`` functions below are verbatim copies of the per-image torch implementations of
:func:`~pandemonium.boxes.box_iou` users (``nms``, ``batched_nms``, ``decode``,
``patched_object_index``, ``DetectionSuccess``) as they were before the per-image work moved to NumPy;
they are the oracle. Inputs are seeded detector outputs with score ties (also more than 16 equal
scores, where torch's CPU argsort is not stable), empty images, images with nothing above the
threshold, zero-area boxes and several classes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from pandemonium.attack.success import DetectionSuccess, SuccessInputs, patched_object_index
from pandemonium.attack.success.base import RowCounts
from pandemonium.boxes import box_iou
from pandemonium.models.detector import batched_nms, decode, grid_centres, nms

# --- the oracle: the torch implementations before the host rewrite ------------------------------------


def _reference_box_iou(a, b):
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter).clamp(min=1e-9)


def _reference_nms(boxes, scores, iou_threshold):
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    over = (_reference_box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    suppressed = np.zeros(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]
    return order[torch.tensor(keep, dtype=torch.long, device=boxes.device)]


def _reference_batched_nms(boxes, scores, labels, iou_threshold):
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offsets = labels.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return _reference_nms(boxes + offsets, scores, iou_threshold)


def _reference_decode(outputs, score_thr=0.05, nms_iou=0.5, max_detections=100, image_size=None):
    results = []
    with torch.no_grad():
        cls_prob, labels = outputs["class_scores"].max(dim=-1)
        scores = outputs["objectness"] * cls_prob
        boxes = outputs["boxes"]
        if image_size is not None:
            h, w = image_size
            boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h), boxes[..., 2].clamp(0, w),
                                 boxes[..., 3].clamp(0, h)], dim=-1)
        for boxes_i, scores_i, labels_i, keep in zip(boxes, scores, labels, scores > score_thr):
            boxes_i, scores_i, labels_i = boxes_i[keep], scores_i[keep], labels_i[keep]
            kept = _reference_batched_nms(boxes_i, scores_i, labels_i, nms_iou)[:max_detections]
            results.append({"boxes": boxes_i[kept], "scores": scores_i[kept], "labels": labels_i[kept]})
    return results


def _reference_area(b):
    return (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)


def _reference_patched_object_index(gt, patch_box, min_share=0.5):
    if patch_box is None or gt.numel() == 0:
        return -1
    pb = patch_box.reshape(-1, 4)[0].to(gt)
    lt = torch.maximum(gt[:, :2], pb[:2])
    rb = torch.minimum(gt[:, 2:], pb[2:])
    share = (rb - lt).clamp(min=0).prod(-1) / _reference_area(pb).clamp(min=1e-9)
    best = int(share.argmax())
    return best if float(share[best]) >= min_share else -1


class _ReferenceDetectionSuccess:
    names = ("object_vanished", "object_recall", "patched_object_vanished", "patched_object_recall")

    def __init__(self, score_threshold=0.5, iou_threshold=0.5, nms_iou=0.5):
        self.score_threshold, self.iou_threshold, self.nms_iou = score_threshold, iou_threshold, nms_iou

    def detections(self, outputs):
        dets = _reference_decode(outputs, score_thr=self.score_threshold, nms_iou=self.nms_iou)
        return [{k: v[d["scores"] >= self.score_threshold] for k, v in d.items()} for d in dets]

    def _found(self, det, gt):
        if gt.numel() == 0 or det["boxes"].numel() == 0:
            return torch.zeros(gt.shape[0], dtype=torch.bool)
        return (_reference_box_iou(gt.float(), det["boxes"].float().cpu()) >= self.iou_threshold).any(dim=1)

    def __call__(self, inputs):
        gt_boxes = inputs.targets.get("boxes")
        arm, control = self.detections(inputs.outputs), self.detections(inputs.control)
        patch_boxes = inputs.targets.get("patch_boxes")
        if isinstance(patch_boxes, Mapping):
            patch_boxes = next(iter(patch_boxes.values()))
        cols = {k: [[], []] for k in self.names}

        def add(key, hits, trials):
            cols[key][0].append(hits)
            cols[key][1].append(trials)

        for i, gt in enumerate(gt_boxes):
            gt = torch.as_tensor(gt).detach().float().cpu().reshape(-1, 4)
            found, found_c = self._found(arm[i], gt), self._found(control[i], gt)
            add("object_recall", float(found.sum()), float(gt.shape[0]))
            add("object_vanished", float((found_c & ~found).sum()), float(found_c.sum()))
            j = _reference_patched_object_index(gt, None if patch_boxes is None
                                                else torch.as_tensor(patch_boxes[i]).cpu())
            add("patched_object_recall", float(j >= 0 and found[j]), float(j >= 0))
            seen = j >= 0 and bool(found_c[j])
            add("patched_object_vanished", float(seen and not found[j]), float(seen))
        return {k: RowCounts.of(h, t) for k, (h, t) in cols.items()}


# --- seeded detector outputs ----------------------------------------------------------------------------


def _outputs(seed: int, batch: int, grid: int = 16, classes: int = 3, ties: bool = False) -> dict[str, torch.Tensor]:
    """A 64x64 detector's dense output (stride 4): objectness mostly low with a few confident cells,
    some of them duplicated boxes; image 0 predicts nothing, image 1 nothing above 0.5."""
    g = torch.Generator().manual_seed(seed)
    n = grid * grid
    centres = grid_centres(grid, grid, 4)
    dist = torch.rand(batch, n, 4, generator=g) * 12
    dist[:, ::7, 0::2] = 0.0  # zero-width boxes
    boxes = torch.cat([centres - dist[..., :2], centres + dist[..., 2:]], dim=-1)
    objectness = torch.rand(batch, n, generator=g) * 0.2
    high = torch.rand(batch, n, generator=g) < 0.08
    objectness = torch.where(high, 0.3 + 0.7 * torch.rand(batch, n, generator=g), objectness)
    class_scores = torch.softmax(3 * torch.randn(batch, n, classes, generator=g), dim=-1)
    if ties:
        objectness = (objectness * 4).round() / 4  # few distinct values: many equal scores
        onehot = torch.rand(batch, n, generator=g) < 0.5
        class_scores = torch.where(onehot[..., None], torch.eye(classes)[torch.randint(classes, (batch, n), generator=g)],
                                   class_scores)
        class_scores[:, 1::5, :2] = 0.5  # tied best classes
        class_scores[:, 1::5, 2:] = 0.0
        boxes[:, 3::11] = boxes[:, 2::11][:, : boxes[:, 3::11].shape[1]]  # identical boxes
    objectness[0] = 0.0
    if batch > 1:
        objectness[1] = objectness[1].clamp(max=0.45)
    return {"boxes": boxes, "objectness": objectness, "class_scores": class_scores}


def _saturated(seed: int, batch: int = 4) -> dict[str, torch.Tensor]:
    """Saturated confident cells: dozens of overlapping boxes with the score exactly 1, so NMS keeps
    what torch's argsort puts first among equal scores."""
    out = _outputs(seed, batch, ties=True)
    out["objectness"][:, 40:120] = 1.0
    out["class_scores"][:, 40:120] = torch.eye(out["class_scores"].shape[-1])[0]
    return out


def _assert_same_detections(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert list(g) == list(w)
        for k in w:
            assert g[k].dtype == w[k].dtype and g[k].device == w[k].device and g[k].shape == w[k].shape, k
            assert torch.equal(g[k], w[k]), k


CASES = [(seed, batch, ties) for seed, batch in ((0, 1), (1, 3), (2, 16), (3, 64)) for ties in (False, True)]


@pytest.mark.parametrize("seed,batch,ties", CASES)
@pytest.mark.parametrize("score_thr,nms_iou", [(0.05, 0.5), (0.5, 0.5), (0.3, 0.3), (0.01, 0.7)])
def test_decode_matches_the_torch_reference(seed, batch, ties, score_thr, nms_iou):
    out = _outputs(seed, batch, ties=ties)
    _assert_same_detections(decode(out, score_thr=score_thr, nms_iou=nms_iou),
                            _reference_decode(out, score_thr=score_thr, nms_iou=nms_iou))


def test_decode_keeps_torchs_order_among_many_equal_scores():
    for seed in range(4):
        out = _saturated(seed)
        want = _reference_decode(out, score_thr=0.05, nms_iou=0.3)
        assert any(int((d["scores"] == 1.0).sum()) > 1 for d in want)
        _assert_same_detections(decode(out, score_thr=0.05, nms_iou=0.3), want)


def test_decode_clipping_truncation_and_gradients_match_the_reference():
    out = _outputs(5, 8, classes=5, ties=True)
    out["boxes"] = (out["boxes"] * 1.5 - 10).requires_grad_()
    for kwargs in ({"image_size": (40, 50)}, {"max_detections": 3}, {"score_thr": 0.0, "max_detections": 300}):
        _assert_same_detections(decode(out, **kwargs), _reference_decode(out, **kwargs))
    _assert_same_detections(decode(out, score_threshold=0.2), _reference_decode(out, score_thr=0.2))
    empty = {k: v[:0] for k, v in out.items()}
    assert decode(empty) == [] == _reference_decode(empty)


# the outputs' own device: CPU everywhere, and CUDA too where a GPU is present (results come back there)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_decode_matches_the_torch_reference_on_the_outputs_device(device):
    for out in (_outputs(3, 64, ties=True), _saturated(1)):
        out = {k: v.to(device) for k, v in out.items()}
        _assert_same_detections(decode(out, score_thr=0.05, nms_iou=0.3), _reference_decode(out, score_thr=0.05, nms_iou=0.3))


def test_bfloat16_outputs_come_back_in_bfloat16():
    """NumPy has no bfloat16: the host steps run in float32, whose IoUs may round differently from
    bfloat16 ones in rare cases; on these outputs the detections are still the reference's."""
    out = {k: v.bfloat16() for k, v in _outputs(6, 16).items()}
    _assert_same_detections(decode(out, score_thr=0.2), _reference_decode(out, score_thr=0.2))


def test_nms_and_batched_nms_match_the_reference_on_ties():
    g = torch.Generator().manual_seed(7)
    for n in (0, 1, 5, 16, 17, 40, 200):
        xy = torch.rand(n, 2, generator=g) * 30
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 15], dim=1)
        boxes[::6, 2] = boxes[::6, 0]  # zero area
        scores = (torch.rand(n, generator=g) * 3).round() / 3
        labels = torch.randint(3, (n,), generator=g)
        for thr in (0.3, 0.5):
            assert torch.equal(nms(boxes, scores, thr), _reference_nms(boxes, scores, thr))
            assert torch.equal(batched_nms(boxes, scores, labels, thr), _reference_batched_nms(boxes, scores, labels, thr))
        strided = torch.stack([scores, scores], dim=1)[:, 0]  # non-contiguous scores
        assert torch.equal(nms(boxes, strided, 0.5), _reference_nms(boxes, strided, 0.5))


def test_nms_orders_equal_scores_as_torch_does():
    """Would fail if equal scores were ordered by a stable sort: torch's CPU argsort is not stable above
    16 elements on AVX512 machines, and some of these orders then differ."""
    g = torch.Generator().manual_seed(3)
    for n in (3, 16, 17, 50, 256):
        scores = (torch.rand(n, generator=g) * 4).round() / 4
        assert nms(torch.zeros(n, 4), scores, 1.0).tolist() == scores.argsort(descending=True).tolist()  # IoU 0: all kept


def test_box_iou_np_is_box_iou_bit_for_bit():
    from pandemonium.boxes import box_iou_np

    g = torch.Generator().manual_seed(11)
    a = torch.rand(3, 30, 4, generator=g) * 20 - 5
    a[..., 2:] = a[..., :2] + torch.rand(3, 30, 2, generator=g) * 10 - 1  # some inverted: zero area
    a[:, ::5, 3] = a[:, ::5, 1]
    b = a.flip(1)[:, :20]
    want = box_iou(a, b)
    assert torch.equal(want, _reference_box_iou(a, b))
    got = box_iou_np(a.numpy(), b.numpy())
    assert got.dtype == np.float32 and np.array_equal(got, want.numpy())
    assert np.array_equal(box_iou_np(a[0].double().numpy(), b[0].double().numpy()), box_iou(a[0].double(), b[0].double()).numpy())


# --- scoring ----------------------------------------------------------------------------------------------


def _scoring_inputs(seed: int, batch: int, ties: bool = False, patch_boxes: str = "tensor") -> SuccessInputs:
    """Ground truth near some confident cells of the control; the scored arm loses some of them."""
    g = torch.Generator().manual_seed(seed + 100)
    control = _outputs(seed, batch, ties=ties)
    arm = {k: v.clone() for k, v in control.items()}
    arm["objectness"] *= (torch.rand(arm["objectness"].shape, generator=g) < 0.6).float()
    gt, patch = [], []
    for i in range(batch):
        confident = torch.nonzero(control["objectness"][i] > 0.5).flatten()
        k = int(torch.randint(0, 6, (1,), generator=g))
        picked = control["boxes"][i, confident[:k]] + torch.rand(min(k, len(confident)), 4, generator=g) * 4 - 2
        extra = torch.rand(int(torch.randint(0, 3, (1,), generator=g)), 2, generator=g) * 50
        boxes = torch.cat([picked, torch.cat([extra, extra + 8], dim=1)])
        gt.append(boxes.double() if i % 3 == 2 else boxes)  # other dtypes are cast like before
        if len(boxes) and i % 4 != 3:  # a patch inside the first object's box, or on nothing
            x0, y0, x1, y1 = boxes[0].tolist()
            patch.append(torch.tensor([x0, y0, x0 + 0.7 * (x1 - x0), y0 + 0.9 * (y1 - y0)]))
        else:
            patch.append(torch.tensor([60.0, 60, 64, 64]))
    if batch > 2:
        gt[2] = torch.zeros(0, 4)  # no objects
    targets = {"boxes": gt, "labels": [torch.zeros(len(b)) for b in gt]}
    if patch_boxes == "tensor":
        targets["patch_boxes"] = torch.stack(patch)
    elif patch_boxes == "mapping":
        targets["patch_boxes"] = {"p": torch.stack(patch).double(), "q": torch.zeros(batch, 4)}
    elif patch_boxes == "list":
        targets["patch_boxes"] = [p.tolist() for p in patch]
    return SuccessInputs(arm, control, targets)


def _assert_same_counts(got, want):
    assert list(got) == list(want)
    for k in want:
        for field in ("hits", "trials"):
            a, b = getattr(got[k], field), getattr(want[k], field)
            assert a.dtype == b.dtype and np.array_equal(a, b), (k, field)


@pytest.mark.parametrize("seed,batch,ties", CASES)
@pytest.mark.parametrize("score_thr,iou_thr", [(0.5, 0.5), (0.3, 0.3), (0.01, 0.7)])
def test_detection_success_matches_the_torch_reference(seed, batch, ties, score_thr, iou_thr):
    inputs = _scoring_inputs(seed, batch, ties)
    got = DetectionSuccess(score_threshold=score_thr, iou_threshold=iou_thr)(inputs)
    want = _ReferenceDetectionSuccess(score_threshold=score_thr, iou_threshold=iou_thr)(inputs)
    _assert_same_counts(got, want)
    assert batch < 16 or any(float(c.hits.sum()) > 0 for c in want.values())  # image 0 predicts nothing
    metric = DetectionSuccess(score_threshold=score_thr)
    _assert_same_detections(metric.detections(inputs.control), _ReferenceDetectionSuccess(score_thr).detections(inputs.control))


@pytest.mark.parametrize("patch_boxes", ["mapping", "list", "none"])
def test_detection_success_patch_box_forms_match_the_reference(patch_boxes):
    inputs = _scoring_inputs(9, 12, ties=True, patch_boxes=patch_boxes)
    _assert_same_counts(DetectionSuccess()(inputs), _ReferenceDetectionSuccess()(inputs))


def test_detection_success_on_saturated_scores_matches_the_reference():
    for seed in range(3):
        inputs = _scoring_inputs(seed, 6, ties=True)
        inputs = SuccessInputs(_saturated(seed, 6), inputs.control, inputs.targets)
        _assert_same_counts(DetectionSuccess(nms_iou=0.3)(inputs), _ReferenceDetectionSuccess(nms_iou=0.3)(inputs))


def test_patched_object_index_matches_the_reference():
    g = torch.Generator().manual_seed(4)
    for _ in range(50):
        xy = torch.rand(6, 2, generator=g) * 20
        gt = torch.cat([xy, xy + torch.rand(6, 2, generator=g) * 10], dim=1)
        gt[::4, 2] = gt[::4, 0]
        p = torch.rand(2, generator=g) * 25
        pb = torch.cat([p, p + torch.rand(2, generator=g) * 6]).double()
        for share in (0.5, 0.1, 0.0):
            assert patched_object_index(gt, pb, share) == _reference_patched_object_index(gt, pb, share)
    assert patched_object_index(torch.zeros(0, 4), pb) == -1 and patched_object_index(gt, None) == -1
