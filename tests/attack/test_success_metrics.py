"""Success metrics on hand-made inputs whose answer is known, all checked by one shared harness."""

from __future__ import annotations

import pytest
import torch

from pandemonium.attack.success import (
    LOSS_TERM_NAMES,
    SUCCESS_METRICS,
    ClassificationSuccess,
    DetectionSuccess,
    SegmentationSuccess,
    SuccessInputs,
    SuccessMetricError,
    check_success_metric,
    map50,
    success_metric_for,
)


def _onehot(pred: list[int], classes: int = 3) -> torch.Tensor:
    return torch.eye(classes)[pred] * 4.0


def _dets(boxes_per_image: list[list[list[float]]], n: int = 4) -> dict[str, torch.Tensor]:
    """Dense detector output with the given confident boxes (rest of the N slots empty)."""
    b = len(boxes_per_image)
    out = {"boxes": torch.zeros(b, n, 4), "objectness": torch.zeros(b, n), "class_scores": torch.full((b, n, 2), 0.5)}
    for i, boxes in enumerate(boxes_per_image):
        for j, box in enumerate(boxes):
            out["boxes"][i, j] = torch.tensor(box)
            out["objectness"][i, j] = 1.0
            out["class_scores"][i, j] = torch.tensor([1.0, 0.0])
    return out


GT = [torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([[0.0, 0, 10, 10]])]
PATCH_BOXES = torch.tensor([[2.0, 2, 8, 8], [40, 40, 44, 44]])  # on object 0 of image 0; on nothing in image 1


def _seg_inputs(patched_changes_outside: bool) -> SuccessInputs:
    truth = torch.zeros(1, 4, 4, dtype=torch.long)
    truth[0, :2] = 1                          # top half class 1, bottom half background 0
    patch = torch.zeros(1, 1, 4, 4)
    patch[0, 0, 3, 3] = 1.0                    # the patch covers one background pixel
    control = torch.nn.functional.one_hot(truth, 3).permute(0, 3, 1, 2).float()  # perfect model
    pred = truth.clone()
    pred[0, 3, 3] = 2                          # the patched pixel itself is always wrong
    if patched_changes_outside:
        pred[0, 0, 0] = 2                      # plus one class-1 pixel outside the patch
    patched = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    return SuccessInputs(patched, control, {"mask": truth}, patch, target_class=2)


CASES = {
    "classification": (ClassificationSuccess(), SuccessInputs(_onehot([2, 1, 2, 0]), _onehot([0, 1, 0, 0]),
                                                              {"class": torch.tensor([0, 1, 2, 1])}, target_class=2)),
    "detection": (DetectionSuccess(), SuccessInputs(_dets([[[20, 20, 30, 30]], [[0, 0, 10, 10]]]),
                                                    _dets([[[0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 10, 10]]]),
                                                    {"boxes": GT, "labels": [torch.zeros(2), torch.zeros(1)],
                                                     "patch_boxes": PATCH_BOXES})),
    "semantic_segmentation": (SegmentationSuccess(), _seg_inputs(True)),
}


@pytest.mark.parametrize("task_type", sorted(CASES))
def test_every_metric_keeps_the_contract(task_type):
    metric, inputs = CASES[task_type]
    out = check_success_metric(metric, inputs)
    assert set(metric.names) <= set(out) | {"targeted_success", "targeted_pixels_outside"}
    assert type(success_metric_for(task_type)) is SUCCESS_METRICS[task_type]


def test_no_metric_shares_a_loss_term_name():
    from pandemonium.attack import losses

    default_terms = set()
    for cls in (losses.ClassificationUntargeted, losses.ClassificationTargeted, losses.DetectionDisappearance,
                losses.SegmentationPixelFlip, losses.TotalVariation):
        import inspect

        default_terms.add(inspect.signature(cls).parameters["term"].default)
    assert default_terms <= LOSS_TERM_NAMES
    for metric_cls in SUCCESS_METRICS.values():
        assert not set(metric_cls.names) & LOSS_TERM_NAMES


def test_classification_rates_use_the_literature_denominators():
    metric, inputs = CASES["classification"]
    out = metric(inputs)
    # control correct on rows 0, 1 only (rows 2, 3: control says 0); patched wrong on row 0 of those
    assert out["untargeted_success"].trials.tolist() == [1, 1, 0, 0]
    assert out["untargeted_success"].hits.tolist() == [1, 0, 0, 0]
    # true class != target (2) on rows 0, 1, 3; patched says 2 on row 0 only (row 2 is already class 2)
    assert out["targeted_success"].rate == pytest.approx(1 / 3)
    control = metric(SuccessInputs(inputs.control, inputs.control, inputs.targets, target_class=2))
    assert control["untargeted_success"].rate == 0.0 and control["targeted_success"].rate == 0.0
    assert "targeted_success" not in metric(SuccessInputs(inputs.outputs, inputs.control, inputs.targets))
    with pytest.raises(SuccessMetricError, match="'class'"):
        metric(SuccessInputs(inputs.outputs, inputs.control, {}))


def test_detector_dropping_exactly_the_patched_object():
    metric, inputs = CASES["detection"]
    out = metric(inputs)
    assert out["object_recall"].hits.tolist() == [1, 1] and out["object_recall"].trials.tolist() == [2, 1]
    assert out["object_vanished"].hits.tolist() == [1, 0] and out["object_vanished"].rate == pytest.approx(1 / 3)
    # only image 0 has its patch on an object; that object vanished
    assert out["patched_object_vanished"].trials.tolist() == [1, 0]
    assert out["patched_object_vanished"].hits.tolist() == [1, 0]
    assert out["patched_object_recall"].rate == 0.0
    control = metric(SuccessInputs(inputs.control, inputs.control, inputs.targets))
    assert control["object_recall"].rate == 1.0 and control["object_vanished"].rate == 0.0


def test_detection_ignores_detections_under_the_score_threshold():
    _, inputs = CASES["detection"]
    weak = {k: v.clone() for k, v in inputs.control.items()}
    weak["objectness"] *= 0.4  # every score 0.4 < 0.5: nothing is found
    out = DetectionSuccess(score_threshold=0.5)(SuccessInputs(weak, inputs.control, inputs.targets))
    assert out["object_recall"].rate == 0.0 and out["object_vanished"].rate == 1.0


def test_map50_with_and_without_the_patch():
    metric, inputs = CASES["detection"]
    labels = [torch.zeros(2, dtype=torch.long), torch.zeros(1, dtype=torch.long)]
    assert map50(metric.detections(inputs.control), GT, labels) == pytest.approx(1.0)
    assert map50(metric.detections(inputs.outputs), GT, labels) < 0.9


def test_segmentation_patch_over_background_scores_zero():
    out = SegmentationSuccess()(_seg_inputs(False))
    assert out["pixels_fooled_outside"].rate == 0.0
    assert out["pixel_accuracy_outside"].rate == 1.0 and out["pixel_accuracy_outside"].trials.tolist() == [15]
    assert out["targeted_pixels_outside"].rate == 0.0
    assert out["pixel_accuracy_inside"].rate == 0.0 and out["pixel_accuracy_inside"].trials.tolist() == [1]


def test_segmentation_counts_only_pixels_outside_the_patch():
    out = SegmentationSuccess()(_seg_inputs(True))
    assert out["pixels_fooled_outside"].rate == pytest.approx(1 / 15)
    assert out["pixel_accuracy_outside"].rate == pytest.approx(14 / 15)
    assert out["targeted_pixels_outside"].rate == pytest.approx(1 / 15)  # 15 non-target pixels outside
    # class 1 outside: 8 true pixels, 7 predicted: IoU 7/8
    assert out["iou_outside.c1"].rate == pytest.approx(7 / 8)
    assert out["iou_outside.c2"].rate == 0.0
