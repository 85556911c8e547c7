"""``predict`` files per task type: the spec's prediction table decides content and file kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pandemonium.modes.predict import write_predictions
from pandemonium.tasks import TaskStruct


class DirFM:
    """The one FileManager call ``write_predictions`` makes, into a folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def construct_saving_path(self, obj, key, task_name, file_name):
        path = self.root / key / task_name / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def outputs_for(task_type: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, generator=gen)
    if task_type == "classification":
        return {"preds": logits, "target": torch.tensor([0, 1, 1]), "scores": logits.softmax(1)}
    if task_type == "multilabel_classification":
        return {"preds": logits, "target": torch.tensor([[0, 1], [1, 1], [0, 0]]), "scores": logits.sigmoid()}
    if task_type == "regression":
        return {"preds": torch.tensor([0.5, 1.0, 2.0]), "target": torch.tensor([0.4, 1.0, 2.5]), "scores": None}
    if task_type == "semantic_segmentation":
        return {"preds": torch.randint(0, 2, (3, 4, 4), generator=gen), "target": None, "scores": None}
    box = {"boxes": torch.tensor([[1.0, 1, 5, 5]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    return {"preds": [box] * 3, "target": None, "scores": None}


@pytest.mark.parametrize("task_type,suffix", [
    ("classification", "csv"), ("multilabel_classification", "csv"), ("regression", "csv"),
    ("semantic_segmentation", "npz"), ("detection", "json"),
])
def test_prediction_file_per_task_type(tmp_path, task_type, suffix):
    struct = TaskStruct(name="toy", task_type=task_type, class_names=["a", "b"])
    outputs = {**outputs_for(task_type), "sample_ids": ["s0", "s1", "s2"]}
    path = write_predictions(DirFM(tmp_path), struct, "test", outputs)
    assert path.suffix == f".{suffix}"
    if suffix == "csv":
        frame = pd.read_csv(path)
        assert list(frame.columns[:2]) == ["sample_id", "split"] and list(frame["sample_id"]) == ["s0", "s1", "s2"]
        if task_type == "classification":
            assert list(frame["pred"]) == outputs["preds"].argmax(1).tolist()
            assert list(frame["pred_name"]) == [["a", "b"][i] for i in frame["pred"]]
        if task_type == "regression":
            assert np.allclose(frame["pred"], [0.5, 1.0, 2.0])
    elif suffix == "npz":
        data = np.load(path)
        assert data["masks"].shape == (3, 4, 4) and list(data["sample_ids"]) == ["s0", "s1", "s2"]
        assert (data["masks"] == outputs["preds"].numpy()).all()
    else:
        records = json.loads(path.read_text())["predictions"]
        assert [r["sample_id"] for r in records] == ["s0", "s1", "s2"]
        assert records[0]["label_names"] == ["b"]
