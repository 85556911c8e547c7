"""Losses: per-sample terms, values, composition, weights and contract errors."""

from __future__ import annotations

import math

import pytest
import torch

from pandemonium.attack.losses import (
    ClassificationTargeted,
    ClassificationUntargeted,
    CompositeLoss,
    DetectionClassFlip,
    DetectionDisappearance,
    LossError,
    NonPrintabilityScore,
    Saliency,
    SegmentationPixelFlip,
    TotalVariation,
    assert_finite,
    find_nonfinite,
    weighted_total,
)
from pandemonium.testing import check_loss

B = 3


@pytest.fixture
def logits():
    return torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]])


@pytest.fixture
def detections():
    return {
        "boxes": torch.zeros(B, 2, 4),
        "objectness": torch.tensor([[0.9, 0.1], [0.2, 0.4], [0.0, 0.0]]),
        "class_scores": torch.tensor(
            [[[0.8, 0.2], [0.5, 0.5]], [[0.1, 0.9], [0.6, 0.4]], [[0.5, 0.5], [0.5, 0.5]]]
        ),
    }


def test_classification_losses(logits):
    targets = {"class": torch.tensor([0, 1, 2])}
    untargeted = check_loss(ClassificationUntargeted(), logits, {"targets": targets}, batch_size=B)
    assert torch.allclose(untargeted["untargeted"], logits.log_softmax(1)[torch.arange(B), targets["class"]])
    margin = check_loss(ClassificationUntargeted(mode="margin", kappa=1.5), logits, {"targets": targets})[
        "untargeted"
    ]
    assert torch.allclose(margin, torch.tensor([2.0, 3.0, 0.0]))
    fixed = ClassificationUntargeted(true_class=1)(logits)["untargeted"]
    assert torch.allclose(fixed, logits.log_softmax(1)[:, 1])
    targeted = check_loss(ClassificationTargeted(2), logits)["targeted"]
    assert torch.allclose(targeted, -logits.log_softmax(1)[:, 2])
    with pytest.raises(LossError, match=r"needs kwargs\['targets'\]\['class'\]"):
        ClassificationUntargeted()(logits)
    with pytest.raises(LossError, match="target_class 7 not in"):
        ClassificationTargeted(7)(logits)


def test_targeted_loss_decreases_as_target_logit_grows(logits):
    loss = ClassificationTargeted(2)
    raised = logits.clone()
    raised[:, 2] += 1.0
    assert bool((loss(raised)["targeted"] < loss(logits)["targeted"]).all())


def test_detection_losses(detections):
    disappearance = check_loss(DetectionDisappearance(), detections, batch_size=B)["disappearance"]
    assert torch.allclose(disappearance, torch.tensor([0.72, 0.24, 0.0]))
    per_class = DetectionDisappearance(class_index=1)(detections)["disappearance"]
    assert torch.allclose(per_class, torch.tensor([0.18, 0.18, 0.0]))
    objectness_only = DetectionDisappearance(score="objectness")(detections)["disappearance"]
    assert torch.allclose(objectness_only, torch.tensor([0.9, 0.4, 0.0]))
    flip = check_loss(DetectionClassFlip(target_class=1, source_class=0), detections)["class_flip"]
    weights = detections["objectness"][0] * detections["class_scores"][0, :, 0]
    expected0 = (weights * -torch.log(detections["class_scores"][0, :, 1])).sum() / weights.sum()
    assert torch.allclose(flip[0], expected0)
    assert flip[2] == 0  # no detections: nothing to flip
    with pytest.raises(LossError, match="expects detector outputs"):
        DetectionDisappearance()(torch.rand(B, 4))


def test_segmentation_pixel_flip():
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 1] = 2.0
    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[1, :2] = 255  # ignored
    untargeted = check_loss(SegmentationPixelFlip(), logits, {"targets": {"mask": mask}}, batch_size=2)[
        "pixel_flip"
    ]
    expected = logits.log_softmax(1)[0, 0, 0, 0]
    assert torch.allclose(untargeted, expected.expand(2))
    region = torch.zeros(2, 1, 4, 4)
    region[:, :, :2, :2] = 1.0
    logits[0, 2, 0, 0] = 10.0  # inside the region
    targeted = SegmentationPixelFlip(target_class=2, region_key="where")(logits, where=region)["pixel_flip"]
    everywhere = SegmentationPixelFlip(target_class=2)(logits)["pixel_flip"]
    assert targeted.shape == (2,) and float(targeted[0]) < float(everywhere[0])
    from_targets = SegmentationPixelFlip(target_class=2, region_key="patch_mask")(
        logits, targets={"patch_mask": region}
    )
    assert torch.equal(from_targets["pixel_flip"], targeted)
    with pytest.raises(LossError, match="region_key 'nowhere' is neither in kwargs"):
        SegmentationPixelFlip(target_class=2, region_key="nowhere")(logits, targets={"mask": mask})
    with pytest.raises(LossError, match="region 'where' has shape"):
        SegmentationPixelFlip(region_key="where")(logits, where=torch.ones(2, 3, 3), targets={"mask": mask})
    with pytest.raises(LossError, match="mask shape"):
        SegmentationPixelFlip()(logits, targets={"mask": mask[:, :2]})


def test_regularisers_per_sample_and_broadcast(logits):
    flat = torch.full((3, 4, 4), 0.5)
    assert torch.equal(check_loss(TotalVariation(), logits, {"patch": flat})["tv"], torch.zeros(B))
    stripes = torch.zeros(3, 4, 4)
    stripes[:, :, ::2] = 1.0
    tv = TotalVariation()(logits, patch=stripes)["tv"]
    assert tv.shape == (B,) and torch.allclose(tv, torch.ones(B))
    batch = torch.stack([flat, stripes, flat])
    per_sample = TotalVariation()(logits, patch=batch)["tv"]
    assert torch.allclose(per_sample, torch.tensor([0.0, 1.0, 0.0]))
    several = TotalVariation()(logits, patch={"a": stripes, "b": stripes})["tv"]
    assert torch.allclose(several, 2 * tv)
    with pytest.raises(LossError, match=r"needs the patch in kwargs\['patch'\]"):
        TotalVariation()(logits)


def test_saliency_measures_curvature_not_slope(logits):
    ramp = torch.linspace(0, 1, 8).expand(3, 8, 8).clone()
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    checker = checker.float().expand(3, 8, 8)
    assert float(TotalVariation()(logits, patch=ramp)["tv"][0]) > 0
    assert float(Saliency()(logits, patch=ramp)["saliency"].max()) < 1e-10
    assert float(Saliency()(logits, patch=checker)["saliency"][0]) > 1.0


def test_non_printability_score(tmp_path, logits):
    black = torch.zeros(3, 4, 4)
    assert float(NonPrintabilityScore()(logits, patch=black)["nps"].max()) < 1e-5
    path = tmp_path / "colours.csv"
    path.write_text("255,0,0\n0,0,255\n")
    nps = NonPrintabilityScore(colors=str(path))
    red = torch.zeros(3, 4, 4)
    red[0] = 1.0
    assert float(nps(logits, patch=red)["nps"][0]) < 1e-5
    green = torch.zeros(3, 4, 4)
    green[1] = 1.0
    assert math.isclose(float(nps(logits, patch=green)["nps"][0]), math.sqrt(2), rel_tol=1e-4)
    with pytest.raises(LossError, match=r"\(N, 3\) RGB table"):
        NonPrintabilityScore(colors=[[0.0, 1.0]])
    with pytest.raises(LossError, match="does not exist"):
        NonPrintabilityScore(colors=str(tmp_path / "none.csv"))


def test_composite_and_weighted_total(logits):
    loss = CompositeLoss([ClassificationTargeted(0), TotalVariation()])
    assert loss.terms == ["targeted", "tv"]
    terms = check_loss(loss, logits, {"patch": torch.rand(3, 4, 4)}, batch_size=B)
    total = weighted_total(terms, {"targeted": 1.0})
    assert torch.allclose(total, terms["targeted"].mean())
    both = weighted_total(terms, {"targeted": 1.0, "tv": 0.5})
    assert torch.allclose(both, terms["targeted"].mean() + 0.5 * terms["tv"].mean())
    with pytest.raises(
        LossError, match=r"unknown loss terms \['tvv'\]; available terms: \['targeted', 'tv'\]"
    ):
        weighted_total(terms, {"tvv": 1.0})
    with pytest.raises(LossError, match="'targeted' is produced by both"):
        CompositeLoss([ClassificationTargeted(0), ClassificationTargeted(1)])
    renamed = CompositeLoss([ClassificationTargeted(0), ClassificationTargeted(1, term="targeted_1")])
    assert set(renamed(logits)) == {"targeted", "targeted_1"}


def test_scalar_loss_is_a_clear_error(logits):
    def mean_loss(outputs, **kwargs):
        return {"ce": outputs.logsumexp(1).mean()}

    mean_loss.name = "MeanLoss"
    with pytest.raises(LossError, match=r"'MeanLoss': term 'ce' has shape \(\); expected per-sample.*scalar"):
        check_loss(mean_loss, logits)
    with pytest.raises(LossError, match="expected batch size 5"):
        check_loss(ClassificationTargeted(0), logits, batch_size=5)
    with pytest.raises(LossError, match="MeanLoss"):
        CompositeLoss([mean_loss])(logits)


def test_nan_detection(logits):
    terms = {"a": torch.tensor([0.0, float("nan"), 1.0]), "b": torch.tensor([float("inf"), 0.0, 0.0])}
    assert find_nonfinite(terms) == {"a": [1], "b": [0]}
    with pytest.raises(LossError, match=r"a: samples \[1\]; b: samples \[0\]"):
        assert_finite(terms)

    def nan_loss(outputs, **kwargs):
        return {"bad": outputs[:, 0] * float("nan")}

    with pytest.raises(LossError, match="non-finite"):
        check_loss(nan_loss, logits)
