"""`pandemonium adopt`: pretrained models as they are, adapted and checked before they are stored."""

from __future__ import annotations

import pytest
import torch

from pandemonium.errors import PandemoniumError
from pandemonium.models.adapters import AdaptedModel, InputAdapter, OutputAdapter
from pandemonium.models.imported import adopt_model
from pandemonium.models.storage import load_model_artifact, load_task_model
from pandemonium.testing.fixtures import write_fake_task

from .conftest import run_mode
from .nets import TinyNet

ADAPT = {"input": {"channels": "bgr", "range": [-1, 1]}, "output": {"kind": "probabilities"}}


@pytest.fixture
def task(tmp_path):
    return write_fake_task(tmp_path / "data", num_samples=16, size=8)


def test_adopt_mode_factory_gets_only_its_kwargs(tmp_path, task):
    result = run_mode(tmp_path / "data", tmp_path / "out", "adopt", "task_list=[fake_cls]",
                      "model.source={_target_: byo.nets.make_net, width: 3}", "model.input.channels=bgr",
                      "model.input.range=[-1,1]", "model.output.kind=probabilities", "mode.batch_size=4")
    assert result["fake_cls"]["query_only"] is False
    model, meta = load_model_artifact(result["fake_cls"]["path"], "fake_cls")
    assert meta["model_config"]["_target_"] == "pandemonium.models.imported.imported_model"
    x = torch.rand(3, 3, 8, 8)
    expected = torch.log(TinyNet()(x.flip(1) * 2 - 1))  # the adapters, written out by hand
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert (model(torch.full((1, 3, 8, 8), 0.9)).argmax(1) == 1).all()  # bright -> class 1


def test_wrong_output_shape_is_named(task):
    cfg = {"source": {"_target_": "byo.nets.make_net", "width": 1, "num_out": 200}, **ADAPT}
    with pytest.raises(PandemoniumError, match=r"model returned shape \(8, 200\) for a batch of 8.*\(B, num_classes\)"):
        adopt_model(task, cfg, path=task.task_dir / "m.pt", batch_size=8)
    assert not (task.task_dir / "m.pt").exists()


def test_declared_probabilities_must_be_probabilities(task, tmp_path):
    cfg = {"source": {"_target_": "byo.nets.TinyNet", "probabilities": False}, **ADAPT}
    with pytest.raises(PandemoniumError, match="kind=probabilities but the model returned values in"):
        adopt_model(task, cfg, path=tmp_path / "m.pt")


def test_traced_fixed_batch_torchscript_is_named(task, tmp_path):
    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = TinyNet()

        def forward(self, x):
            return self.net(x).reshape(4, 2)  # traced: the batch of 4 is baked in

    torch.jit.trace(Fixed(), torch.rand(4, 3, 8, 8)).save(str(tmp_path / "fixed.pt"))
    with pytest.raises(PandemoniumError, match="fixed batch size"):
        adopt_model(task, {"source": str(tmp_path / "fixed.pt"), **ADAPT}, path=tmp_path / "m.pt", batch_size=4)
    torch.jit.script(TinyNet()).save(str(tmp_path / "ok.pt"))
    path, _ = adopt_model(task, {"source": str(tmp_path / "ok.pt"), **ADAPT}, path=tmp_path / "m.pt", batch_size=4)
    task.paths["models"] = path
    model, _ = load_task_model(task)
    assert model(torch.rand(5, 3, 8, 8)).shape == (5, 2)


def test_state_dict_with_architecture(task, tmp_path):
    net = TinyNet()
    with torch.no_grad():
        net.fc.bias.fill_(0.25)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    cfg = {"source": {"state_dict": str(tmp_path / "w.pt"), "architecture": {"_target_": "byo.nets.TinyNet"}}, **ADAPT}
    path, _ = adopt_model(task, cfg, path=tmp_path / "m.pt")
    (tmp_path / "w.pt").unlink()  # the artifact holds the weights
    model, _ = load_model_artifact(path)
    assert torch.allclose(model.model.fc.bias, torch.full((2,), 0.25))


def _export(path, batch_dynamic: bool, batch: int = 2):
    x = torch.rand(batch, 3, 8, 8)
    axes = {"x": {0: "b"}, "y": {0: "b"}} if batch_dynamic else None
    torch.onnx.export(TinyNet().eval(), (x,), str(path), input_names=["x"], output_names=["y"], dynamic_axes=axes,
                      dynamo=False)


def test_onnx_source_runs_through_onnxruntime(task, tmp_path):
    pytest.importorskip("onnxruntime")
    _export(tmp_path / "net.onnx", batch_dynamic=True)
    path, model = adopt_model(task, {"source": str(tmp_path / "net.onnx"), **ADAPT}, path=tmp_path / "m.pt")
    rebuilt, meta = load_model_artifact(path)
    assert meta["extra"]["imported"]["query_only"] is True
    x = torch.rand(5, 3, 8, 8)
    assert torch.allclose(rebuilt(x), torch.log(TinyNet()(x.flip(1) * 2 - 1)), atol=1e-5)
    assert rebuilt.model.queries == 5
    _export(tmp_path / "fixed.onnx", batch_dynamic=False, batch=2)
    with pytest.raises(PandemoniumError, match=r"fixed\.onnx' has a fixed batch size of 2 but was given a batch of 8"):
        adopt_model(task, {"source": str(tmp_path / "fixed.onnx"), **ADAPT}, path=tmp_path / "m2.pt", batch_size=8)


def test_output_adapters_detection_and_segmentation():
    yolo = OutputAdapter("detection", kind="yolo", num_classes=2, model_size=(10, 10))
    rows = torch.tensor([[[5.0, 5.0, 4.0, 2.0, 0.9, 0.2, 0.8]]])
    out = yolo(rows, (20, 40))  # model saw 10x10, the image is 20x40 (H x W)
    assert torch.allclose(out["boxes"], torch.tensor([[[12.0, 8.0, 28.0, 12.0]]]))
    assert out["objectness"].tolist() == [[pytest.approx(0.9)]] and out["class_scores"].shape == (1, 1, 2)
    tv = OutputAdapter("detection", kind="torchvision", num_classes=2, label_offset=1, max_detections=3)
    dets = [{"boxes": torch.tensor([[1.0, 1, 4, 4], [2, 2, 6, 6]]), "scores": torch.tensor([0.3, 0.7]),
             "labels": torch.tensor([1, 2])}, {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                               "labels": torch.zeros(0, dtype=torch.long)}]
    out = tv(dets, (8, 8))
    assert out["boxes"].shape == (2, 3, 4) and out["objectness"][0].tolist() == pytest.approx([0.7, 0.3, 0.0])
    assert out["class_scores"][0, 0].tolist() == [0.0, 1.0] and out["class_scores"][1].sum() == 0
    with pytest.raises(PandemoniumError, match="outside 0..1 after label_offset=1"):
        tv([{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([5])}], (8, 8))
    seg = AdaptedModel(torch.nn.Conv2d(3, 1, 1), InputAdapter(size=(4, 4)),
                       OutputAdapter("semantic_segmentation", kind="sigmoid"))
    logits = seg(torch.rand(2, 3, 8, 8))
    assert logits.shape == (2, 2, 8, 8) and (logits[:, 0] == 0).all()
    with pytest.raises(PandemoniumError, match="kind 'yolo' does not fit a classification model"):
        OutputAdapter("classification", kind="yolo")
