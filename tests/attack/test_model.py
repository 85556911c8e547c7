"""ModelStage: frozen victims, gradients to the input, ensembles, eval model, detector adapter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pandemonium.attack import DetectorOutputAdapter, ModelStage, Pipeline, StageError
from pandemonium.testing import check_stage


class TinyDetector(nn.Module):
    """Returns YOLO-style rows (B, N, 5 + C): cx, cy, w, h, objectness logit, class logits."""

    def __init__(self, n: int = 4, classes: int = 2):
        super().__init__()
        self.n, self.classes = n, classes
        self.head = nn.Linear(3, n * (5 + classes))

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3))).view(x.shape[0], self.n, 5 + self.classes)


def test_model_stage_contract(classifier, patch_batch, toys):
    check_stage(ModelStage(classifier), patch_batch, rebuild_kwargs={"model": classifier})
    other = toys.tiny_classifier(seed=1)
    check_stage(
        ModelStage([classifier, other], eval_model=other),
        patch_batch,
        rebuild_kwargs={"model": [classifier, other], "eval_model": other},
    )


def test_weights_frozen_eval_mode_and_input_gradient(patch_batch):
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Dropout(0.5), nn.BatchNorm2d(2), nn.Flatten())
    stage = ModelStage(model)
    pipe = Pipeline(stage)
    pipe.train()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = patch_batch.clone().requires_grad_(True)
    y1, _ = pipe(x)
    y2, _ = pipe(x)
    assert torch.equal(y1, y2)  # dropout off, BN statistics frozen
    y1.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_ensembles(classifier, toys, patch_batch):
    other = toys.tiny_classifier(seed=1)
    mean = ModelStage([classifier, other])(patch_batch)[0]
    assert torch.allclose(mean, (classifier(patch_batch) + other(patch_batch)) / 2)
    per_model = ModelStage({"a": classifier, "b": other})(patch_batch)[0]
    assert set(per_model) == {"a", "b"} and torch.equal(per_model["b"], other(patch_batch))
    listed = ModelStage([classifier, other], reduce="none")(patch_batch)[0]
    assert isinstance(listed, list) and len(listed) == 2
    with pytest.raises(StageError, match="cannot average outputs of shapes"):
        ModelStage([classifier, toys.tiny_classifier(num_classes=5)])(patch_batch)
    with pytest.raises(StageError, match="reduce must be one of"):
        ModelStage(classifier, reduce="max")


def test_eval_model_is_used_for_evaluation(classifier, toys, patch_batch):
    other = toys.tiny_classifier(seed=2)
    stage = ModelStage(classifier, eval_model=other)
    assert torch.equal(stage(patch_batch)[0], classifier(patch_batch))
    assert torch.equal(stage(patch_batch, evaluate=True)[0], other(patch_batch))
    assert "transfer" in stage.get_description()


def test_detector_adapter_layouts():
    rows = torch.tensor([[[10.0, 20.0, 4.0, 6.0, 0.0, 1.0, 3.0]]])
    out = DetectorOutputAdapter(
        layout="yolo", box_format="cxcywh", scores_are_logits=True, objectness_is_logits=True
    )(rows)
    assert torch.allclose(out["boxes"], torch.tensor([[[8.0, 17.0, 12.0, 23.0]]]))
    assert torch.allclose(out["objectness"], torch.tensor([[0.5]]))
    assert torch.allclose(out["class_scores"].sum(-1), torch.ones(1, 1))
    boxes, obj, scores = torch.rand(2, 3, 4), torch.rand(2, 3), torch.rand(2, 3, 5)
    tupled = DetectorOutputAdapter(layout="tuple", box_format="xywh")((boxes, obj, scores))
    assert torch.allclose(tupled["boxes"][..., 2:], boxes[..., :2] + boxes[..., 2:])
    renamed = DetectorOutputAdapter(boxes_key="b", objectness_key=None, class_scores_key="s")(
        {"b": boxes, "s": scores}
    )
    assert torch.equal(renamed["objectness"], scores.max(-1).values)
    with pytest.raises(StageError, match=r"lacks keys \['objectness'\]"):
        DetectorOutputAdapter()({"boxes": boxes, "class_scores": scores})
    with pytest.raises(StageError, match="layout='yolo'.*\\(B, N, 5 \\+ C\\)"):
        DetectorOutputAdapter(layout="yolo")(torch.rand(2, 3))


def test_detector_stage_and_concat_ensemble(patch_batch):
    a, b = TinyDetector(), TinyDetector(n=2)
    adapter = {
        "layout": "yolo",
        "box_format": "cxcywh",
        "scores_are_logits": True,
        "objectness_is_logits": True,
    }
    out = ModelStage(a, adapter=adapter)(patch_batch)[0]
    assert (
        out["boxes"].shape == (3, 4, 4)
        and out["objectness"].shape == (3, 4)
        and out["class_scores"].shape == (3, 4, 2)
    )
    both = ModelStage([a, b], adapter=adapter, reduce="concat")(patch_batch)[0]
    assert both["objectness"].shape == (3, 6)
    with pytest.raises(StageError, match="reduce='mean' averages tensor outputs"):
        ModelStage([a, b], adapter=adapter)(patch_batch)


def test_bad_model_specs():
    with pytest.raises(StageError, match="model of type int"):
        ModelStage(3)
    with pytest.raises(StageError, match="cannot instantiate model from 'not.a.Factory'"):
        ModelStage({"_target_": "not.a.Factory"})
    with pytest.raises(StageError, match="empty list"):
        ModelStage([])
