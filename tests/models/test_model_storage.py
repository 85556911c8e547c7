"""Model artifacts: round trip, TorchScript inside, FileManager paths, and unreadable artifacts."""

from __future__ import annotations

import pytest
import torch

from pandemonium.models.factory import build_model
from pandemonium.models.storage import (
    ModelArtifactError,
    attach_stored_model,
    load_model_artifact,
    load_task_model,
    save_model_artifact,
)
from pandemonium.runs.file_manager import FileManager
from pandemonium.tasks.struct import TaskStruct

TINY = {"_target_": "pandemonium.models.factory.task_model", "preset": "tiny"}


def struct_of(task_type: str = "detection") -> TaskStruct:
    return TaskStruct(name="toy", task_type=task_type, class_names=["a", "b"], image_size=(32, 32), channels=3,
                      mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4])


@pytest.fixture
def fm(tmp_path):
    return FileManager(proj_path=tmp_path / "proj", run_path=tmp_path / "proj" / "runs" / "r1")


@pytest.mark.parametrize("task_type", ["detection", "semantic_segmentation"])
def test_roundtrip_rebuilds_the_same_function(fm, task_type):
    struct = struct_of(task_type)
    model = build_model(struct, TINY).eval()
    with torch.no_grad():  # make weights differ from a fresh init so the test can fail
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    path = save_model_artifact(model, struct, TINY, fm=fm, fold=2, metrics={"val/map50": torch.tensor(0.5)})
    assert path.parent == fm.proj_path / "MODELS" / "toy" and path.stat().st_size > 0
    struct.paths["models"] = path
    loaded, meta = load_task_model(struct)
    assert meta["task_name"] == "toy" and meta["fold"] == 2 and meta["metrics"] == {"val/map50": 0.5}
    assert meta["struct"]["mean"] == pytest.approx([0.4, 0.5, 0.6])
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    if isinstance(a, dict):
        for key in a:
            torch.testing.assert_close(a[key], b[key])
    else:
        torch.testing.assert_close(a, b)


def test_torchscript_model_is_stored_inside_the_artifact(tmp_path):
    struct = struct_of("classification")
    traced = torch.jit.trace(build_model(struct, TINY).eval(), torch.rand(1, 3, 32, 32))
    script_file = tmp_path / "user_model.pt"
    traced.save(str(script_file))
    model = build_model(struct, {"torchscript": str(script_file)})
    path = save_model_artifact(model, struct, {"torchscript": str(script_file)}, path=tmp_path / "a.pt")
    script_file.unlink()  # the artifact must not depend on the original file
    loaded, _ = load_model_artifact(path)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), traced(x))


def test_missing_empty_and_corrupt_artifacts_name_task_and_path(tmp_path):
    struct = struct_of()
    with pytest.raises(ModelArtifactError, match="'toy' has no stored model"):
        load_task_model(struct)
    empty = tmp_path / "empty.pt"
    empty.touch()
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    for path, words in ((tmp_path / "nope.pt", "does not exist"), (empty, "empty"), (corrupt, "corrupt"),
                        (other, "not a pandemonium model artifact")):
        struct.paths["models"] = path
        with pytest.raises(ModelArtifactError) as err:
            load_task_model(struct)
        assert "'toy'" in str(err.value) and str(path) in str(err.value) and words in str(err.value)


def test_artifact_of_another_task_is_refused(fm):
    struct = struct_of()
    path = save_model_artifact(build_model(struct, TINY), struct, TINY, fm=fm)
    with pytest.raises(ModelArtifactError, match="belongs to task 'toy'"):
        load_model_artifact(path, task_name="other")


def test_attach_stored_model_prefers_struct_then_newest(fm, tmp_path):
    struct = struct_of()
    with pytest.raises(ModelArtifactError, match="toy"):
        attach_stored_model(struct, fm)
    first = save_model_artifact(build_model(struct, TINY), struct, TINY, fm=fm)
    second = save_model_artifact(build_model(struct, TINY), struct, TINY, fm=fm)
    assert first != second  # numbered: nothing is overwritten
    assert attach_stored_model(struct, fm) == second
    struct.paths["models"] = first
    assert attach_stored_model(struct, fm) == first
