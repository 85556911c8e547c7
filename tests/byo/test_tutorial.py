"""docs/tutorial.md, step by step, on generated photos and an ONNX model exported here."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pandemonium.attack.blackbox import FunctionObjective, SparseRSPatch
from pandemonium.models.storage import load_task_model
from pandemonium.tasks.creators import load_task_struct
from pandemonium.tasks.datamodule import TaskDataset

from .conftest import run_mode, write_png
from .nets import TinyNet


def _flat(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _flat(v, f"{prefix}/{k}")
    elif isinstance(value, int | float):
        yield prefix, value


@pytest.mark.slow
def test_tutorial(tmp_path):
    pytest.importorskip("onnxruntime")
    data, out = tmp_path / "data", tmp_path / "results"
    for k, name in enumerate(("0_dark", "1_bright")):  # step 1: a folder of photos (sorted = class ids)
        for i in range(10):
            write_png(tmp_path / "photos" / name / f"{i}.jpg", 50 + 150 * k + i, size=(20, 20))
    torch.onnx.export(TinyNet().eval(), (torch.rand(2, 3, 16, 16),), str(tmp_path / "my_model.onnx"),
                      input_names=["x"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)

    imported = run_mode(data, out, "import", "task=my_photos", "from=folder", f"root={tmp_path / 'photos'}",
                        "image_size=16")
    assert imported["samples"] == 20

    adopted = run_mode(data, out, "adopt", "task_list=[my_photos]", f"model.source={tmp_path / 'my_model.onnx'}",
                       "model.input.channels=bgr", "model.input.range=[-1,1]", "model.output.kind=probabilities")
    assert adopted["my_photos"]["query_only"] is True

    run_mode(data, out, "test", "task_list=[my_photos]", "mode.bootstrap.n=20")
    tables = sorted(out.rglob("*.json"))
    metrics = [json.loads(p.read_text()) for p in tables if "test_metrics" in str(p)]
    assert metrics, [str(p) for p in tables]
    accuracy = [v for m in metrics for k, v in _flat(m) if "accuracy" in k and k.endswith("/value")]
    assert accuracy and min(accuracy) == pytest.approx(1.0)  # the 'pretrained' model reads brightness right

    struct = load_task_struct("my_photos", data)  # step 4: a black-box patch against the ONNX model
    struct.paths["models"] = adopted["my_photos"]["path"]
    model, _ = load_task_model(struct)
    dataset = TaskDataset(struct, "all")
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset)) if dataset[i]["class"] == 0])
    target = torch.ones(len(images), dtype=torch.long)  # dark photos to be read as bright

    def paste(batch, patch):
        batch = batch.clone()
        batch[:, :, 2:14, 2:14] = patch
        return batch

    objective = FunctionObjective(lambda p: F.cross_entropy(model(paste(images, p)), target, reduction="none"))
    objective.batch_size = len(images)
    result = SparseRSPatch(objective, (3, 12, 12), query_budget=len(images) * 300, seed=0).run(torch.zeros(3, 12, 12))
    before = float((model(images).argmax(1) == 1).float().mean())
    after = float((model(paste(images, result.patch)).argmax(1) == 1).float().mean())
    assert after > before and result.queries <= len(images) * 300
