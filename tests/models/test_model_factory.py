"""Models: output layouts per task type, detector decode/NMS, metrics, losses, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pandemonium.boxes import box_iou
from pandemonium.models.detector import CenterDetector, decode, nms
from pandemonium.models.factory import ModelBuildError, StructSummary, build_model, check_model_output
from pandemonium.models.lightning_module import CONFIGS_ROUTES, apply_kornia, build_loss, build_metrics
from pandemonium.models.metrics import DetectionMAP, bootstrap_metrics
from pandemonium.tasks.attributes import Modality, TaskType
from pandemonium.tasks.struct import TaskStruct

TINY = {"_target_": "pandemonium.models.factory.task_model", "preset": "tiny"}


def make_struct(task_type: str, num_classes: int = 3, channels: int = 3, size: int = 32, **kw) -> TaskStruct:
    names = [f"c{i}" for i in range(num_classes)]
    return TaskStruct(name=f"toy_{task_type}", task_type=task_type, class_names=names, image_size=(size, size),
                      channels=channels, mean=[0.5] * channels, std=[0.25] * channels, **kw)


@pytest.mark.parametrize(
    ("task_type", "channels", "expected"),
    [
        ("classification", 3, (2, 3)),
        ("multilabel_classification", 1, (2, 3)),
        ("semantic_segmentation", 3, (2, 3, 32, 32)),
        ("regression", 1, (2,)),
    ],
)
def test_output_shape_per_task_type(task_type, channels, expected):
    model = build_model(make_struct(task_type, channels=channels), TINY)
    out = model(torch.rand(2, channels, 32, 32))
    assert tuple(out.shape) == expected


def test_detector_layout_ranges_and_gradient_to_image():
    model = build_model(make_struct("detection", num_classes=4), TINY)
    assert isinstance(model, CenterDetector)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    n = (32 // 4) ** 2
    assert out["boxes"].shape == (2, n, 4)
    assert out["objectness"].shape == (2, n)
    assert out["class_scores"].shape == (2, n, 4)
    assert 0 <= float(out["objectness"].detach().min()) and float(out["objectness"].detach().max()) <= 1
    torch.testing.assert_close(out["class_scores"].sum(-1), torch.ones(2, n))
    # "hide objects" attacks push objectness down through the image: the gradient must reach it
    out["objectness"].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_normalisation_lives_in_the_model():
    struct = make_struct("classification")
    struct.mean, struct.std = [0.1, 0.2, 0.3], [0.5, 0.5, 0.5]
    model = build_model(struct, TINY)
    state = model.state_dict()
    torch.testing.assert_close(state["normalize.mean"].flatten(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(state["normalize.std"].flatten(), torch.tensor([0.5, 0.5, 0.5]))


def test_nms_suppresses_overlaps_and_keeps_other_classes():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    assert float(box_iou(boxes[:1], boxes[1:2])) == pytest.approx(81 / 119)
    # class-aware decoding: the same box predicted for two classes survives once per class
    out = {
        "boxes": boxes[None, [0, 1, 0]],
        "objectness": torch.tensor([[0.9, 0.8, 0.9]]),
        "class_scores": torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]]),
    }
    (det,) = decode(out, score_thr=0.1, nms_iou=0.5)
    assert sorted(det["labels"].tolist()) == [0, 1]
    assert det["scores"].tolist() == sorted(det["scores"].tolist(), reverse=True)


def test_detection_map_perfect_partial_and_empty():
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([0, 1])}]
    perfect = [{"boxes": gt[0]["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])}]
    wrong_class = [{"boxes": gt[0]["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 0])}]
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    values = []
    for preds in (perfect, wrong_class, empty):
        metric = DetectionMAP()
        metric.update(preds, gt)
        values.append(float(metric.compute()))
    assert values[0] == pytest.approx(1.0)
    assert 0.0 < values[1] < 1.0
    assert values[2] == 0.0


def test_bootstrap_is_seeded_and_brackets_the_value():
    metrics = build_metrics(TaskType.CLASSIFICATION, 3)
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (60,), generator=gen)
    logits = torch.nn.functional.one_hot(target, 3).float() + 1.5 * torch.rand(60, 3, generator=gen)
    a = bootstrap_metrics(metrics, logits, target, n_boot=50, seed=1)
    b = bootstrap_metrics(metrics, logits, target, n_boot=50, seed=1)
    c = bootstrap_metrics(metrics, logits, target, n_boot=50, seed=2)
    assert a == b
    assert a != c
    acc = a["accuracy"]
    assert acc["low"] <= acc["value"] <= acc["high"]
    assert acc["high"] - acc["low"] > 0


def test_routes_cover_every_builtin_task_type():
    for task_type in TaskType:
        route = CONFIGS_ROUTES[task_type]
        assert set(route) == {"loss", "metrics"}
        assert isinstance(build_loss(task_type), nn.Module)


def test_losses_decrease_when_overfitting_one_batch():
    torch.manual_seed(0)
    batches = {
        "classification": {"class": torch.tensor([0, 1, 2, 1])},
        "semantic_segmentation": {"mask": (torch.rand(4, 32, 32) * 3).long()},
        "detection": {"boxes": [torch.tensor([[4.0, 4, 20, 20]])] * 4, "labels": [torch.tensor([1])] * 4},
    }
    for task_type, targets in batches.items():
        model = build_model(make_struct(task_type), TINY)
        loss_fn = build_loss(task_type)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        batch = {"image": torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), **targets}
        losses = []
        for _ in range(8):
            loss = loss_fn(model(batch["image"]), batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0], (task_type, losses)


def test_kornia_flip_moves_masks_and_boxes_with_the_image():
    import kornia.augmentation as K

    from pandemonium.models.lightning_module import build_gpu_augmentation

    aug = build_gpu_augmentation({"flip": {"_target_": "kornia.augmentation.RandomHorizontalFlip", "p": 1.0}})
    assert isinstance(aug, K.AugmentationSequential)
    image = torch.zeros(1, 3, 16, 16)
    image[..., 2:6, 1:5] = 1
    mask = (image[:, 0] > 0).long()
    batch = {"image": image, "mask": mask, "boxes": [torch.tensor([[1.0, 2, 5, 6]])], "labels": [torch.tensor([2])]}
    out = apply_kornia(aug, batch)
    assert torch.equal(out["image"], image.flip(-1))
    assert torch.equal(out["mask"], mask.flip(-1))
    torch.testing.assert_close(out["boxes"][0], torch.tensor([[11.0, 2, 15, 6]]), atol=1.0, rtol=0)
    assert out["labels"][0].tolist() == [2]


# -- bad input -------------------------------------------------------------------------------------
class WrongShape(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3, num_classes + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def test_output_not_fitting_the_task_type_is_one_clear_error():
    struct = make_struct("classification", num_classes=3)
    with pytest.raises(ModelBuildError) as err:
        build_model(struct, {"_target_": f"{__name__}.WrongShape"})
    message = str(err.value)
    assert "toy_classification" in message and "(2, 3)" in message and "(2, 5)" in message


def test_detection_model_returning_a_tensor_is_rejected():
    struct = make_struct("detection", num_classes=3)
    with pytest.raises(ModelBuildError, match=r"toy_detection.*\"boxes\": \(B, N, 4\)"):
        check_model_output(WrongShape(3), struct)


def test_user_factory_gets_task_kwargs():
    struct = make_struct("classification", num_classes=4)
    model = build_model(struct, {"_target_": f"{__name__}.WrongShape"}, check_output=False)
    assert model.fc.out_features == 6  # num_classes=4 was passed in because the class accepts it


def test_target_that_does_not_import_names_task_and_target():
    with pytest.raises(ModelBuildError, match="toy_classification.*no.such.Model"):
        build_model(make_struct("classification"), {"_target_": "no.such.Model"})


def test_torchscript_file_that_does_not_load(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"definitely not torchscript")
    for path in (bad, tmp_path / "missing.pt"):
        with pytest.raises(ModelBuildError) as err:
            build_model(make_struct("classification"), {"torchscript": str(path)})
        assert "toy_classification" in str(err.value) and str(path) in str(err.value)


def test_torchscript_file_is_accepted(tmp_path):
    struct = make_struct("classification", num_classes=3)
    traced = torch.jit.trace(build_model(struct, TINY).eval(), torch.rand(1, 3, 32, 32))
    path = tmp_path / "traced.pt"
    traced.save(str(path))
    model = build_model(struct, {"torchscript": str(path)})
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), traced(x))


def test_task_without_required_modalities():
    struct = make_struct("semantic_segmentation", modalities=[Modality.IMAGE, Modality.SAMPLE_ID])
    with pytest.raises(ModelBuildError) as err:
        build_model(struct, TINY)
    assert "toy_semantic_segmentation" in str(err.value) and "mask" in str(err.value)


def test_summary_roundtrip():
    struct = make_struct("detection", num_classes=2)
    info = StructSummary.from_struct(struct)
    assert StructSummary.from_struct(info.to_dict()) == info


def test_public_names_resolve():
    import pandemonium.models as models

    for name in models.__all__:
        assert getattr(models, name) is not None


@pytest.mark.parametrize("task_type", [t.value for t in TaskType])
def test_routed_metrics_accept_the_model_outputs(task_type):
    from pandemonium.models.metrics import metric_inputs

    struct = make_struct(task_type, num_classes=3)
    model = build_model(struct, TINY).eval()
    gen = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(4, 3, 32, 32, generator=gen), "class": torch.tensor([0, 1, 2, 0]),
             "classes": torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0]]),
             "mask": torch.randint(0, 3, (4, 32, 32), generator=gen), "value": torch.rand(4, generator=gen),
             "boxes": [torch.tensor([[2.0, 2, 12, 12]])] * 4, "labels": [torch.tensor([1])] * 4}
    metrics = build_metrics(task_type, 3)
    with torch.no_grad():
        metrics.update(*metric_inputs(task_type, model(batch["image"]), batch))
    values = metrics.compute()
    assert values and all(torch.isfinite(torch.as_tensor(v)).all() for v in values.values())
    loss = build_loss(task_type)(model(batch["image"]), batch)["loss"]
    assert torch.isfinite(loss)


def test_trainer_settings_apply_task_type_overrides():
    from pandemonium.cli.main import compose_config
    from pandemonium.models.training import trainer_settings

    cfg = compose_config(["mode=train"])
    epochs = {t: trainer_settings(cfg.trainer, t)["lightning"]["max_epochs"] for t in ("classification", "detection")}
    assert epochs == {"classification": 15, "detection": 10}
    fast = compose_config(["mode=train", "trainer=fast", "trainer.task_type_overrides.detection.lightning.max_epochs=1"])
    assert trainer_settings(fast.trainer, "detection")["lightning"]["max_epochs"] == 1
    assert trainer_settings(fast.trainer, "semantic_segmentation")["lightning"]["max_epochs"] == 2
    assert trainer_settings(fast.trainer, "classification")["early_stopping"]["enabled"] is False


def test_unreachable_mlflow_server_fails_before_training(tmp_path):
    from pandemonium.errors import ConfigError
    from pandemonium.models.training import make_loggers

    cfg = {"mlflow": {"enabled": True, "tracking_uri": "http://127.0.0.1:9"}, "tensorboard": {"enabled": False}}
    with pytest.raises(ConfigError, match="127.0.0.1:9"):
        make_loggers(cfg, tmp_path, tmp_path, "run")
    ok = make_loggers({"mlflow": {"enabled": False}, "tensorboard": {"enabled": True}}, tmp_path, tmp_path, "run")
    assert [type(x).__name__ for x in ok] == ["TensorBoardLogger"]


def test_routes_can_be_set_in_code_and_reset():
    before = CONFIGS_ROUTES[TaskType.CLASSIFICATION]
    CONFIGS_ROUTES[TaskType.CLASSIFICATION] = {"loss": "binary_cross_entropy", "metrics": "classification"}
    try:
        assert type(build_loss("classification")).__name__ == "MultilabelLoss"
    finally:
        del CONFIGS_ROUTES[TaskType.CLASSIFICATION]
    assert CONFIGS_ROUTES[TaskType.CLASSIFICATION] == before
    with pytest.raises(Exception, match="exactly the keys"):
        CONFIGS_ROUTES[TaskType.CLASSIFICATION] = {"loss": "cross_entropy"}


def test_root_device_setting_reaches_the_trainer():
    from pandemonium.models.training import lightning_device_kwargs, resolve_device

    assert lightning_device_kwargs("auto", {}) == {}
    assert lightning_device_kwargs("cpu", {}) == {"accelerator": "cpu", "devices": 1}
    assert lightning_device_kwargs("cuda:1", {}) == {"accelerator": "gpu", "devices": [1]}
    assert resolve_device("cpu").type == "cpu"
