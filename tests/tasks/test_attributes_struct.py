from pathlib import Path

import pytest

from pandemonium.tasks import (
    KORNIA_VALID_MODALITIES,
    MODALITY_VERIFIER_MAP,
    Modality,
    TaskStruct,
    TaskType,
    build_loaders,
    register_modality,
    register_modality_loader,
    register_task_type,
)
from pandemonium.tasks.attributes import unregister_modality
from pandemonium.tasks.loaders import DEFAULT_LOADERS, ValueLoader
from pandemonium.tasktypes import unregister_task_type


def test_modality_and_task_type_values():
    assert {m.value for m in Modality} >= {"image", "mask", "boxes", "class", "classes", "value", "sample_id"}
    assert TaskType("semantic_segmentation") is TaskType.SEMANTIC_SEGMENTATION
    assert TaskType.CLASSIFICATION.requires() == {Modality.IMAGE, Modality.CLASS, Modality.SAMPLE_ID}
    assert Modality.BOXES in TaskType.DETECTION.requires()
    assert Modality.MASK in TaskType.SEMANTIC_SEGMENTATION.requires()
    # requires() hands out a copy: callers cannot corrupt the table
    TaskType.DETECTION.requires().add(Modality.VALUE)
    assert Modality.VALUE not in TaskType.DETECTION.requires()
    assert set(KORNIA_VALID_MODALITIES) == {Modality.IMAGE, Modality.MASK, Modality.BOXES}


@pytest.mark.parametrize(
    "task_type,target",
    [
        (TaskType.CLASSIFICATION, Modality.CLASS),
        (TaskType.MULTILABEL_CLASSIFICATION, Modality.CLASSES),
        (TaskType.SEMANTIC_SEGMENTATION, Modality.MASK),
        (TaskType.DETECTION, Modality.BOXES),
        (TaskType.REGRESSION, Modality.VALUE),
    ],
)
def test_struct_target(task_type, target):
    struct = TaskStruct(name="t", task_type=task_type, class_names=["a", "b"])
    assert struct.target is target
    assert target in task_type.requires()


def test_struct_round_trip_makes_paths_json():
    struct = TaskStruct(
        name="toy", task_type="detection", class_names=["a", "b", "c"], image_size=(48, 64),
        channels=3, task_dir=Path("/x/tasks/toy"),
        paths={"models": Path("/r/model.pt"), "several": [Path("/a"), "b"], "nested": {"k": Path("/c")}},
    )
    data = struct.to_dict()
    assert data["paths"] == {"models": "/r/model.pt", "several": ["/a", "b"], "nested": {"k": "/c"}}
    assert data["task_type"] == "detection"
    back = TaskStruct.from_dict(data)
    assert back.task_type is TaskType.DETECTION
    assert back.num_classes == 3 and back.image_size == (48, 64)
    assert back.paths["models"] == "/r/model.pt"
    assert back.task_dir == Path("/x/tasks/toy")
    assert TaskStruct.from_dict(back.to_dict()) == back
    with pytest.raises(ValueError, match="bogus"):
        TaskStruct.from_dict({**data, "bogus": 1})


@pytest.fixture
def depth_modality():
    """Register a plugin modality + task type, and remove them afterwards (no leak into other tests)."""
    depth = register_modality("DEPTH", "depth")
    task_type = register_task_type("DEPTH_ESTIMATION", "depth_estimation", requires=["depth"], target="depth")
    yield depth, task_type
    unregister_task_type(task_type)
    DEFAULT_LOADERS.pop(depth, None)
    MODALITY_VERIFIER_MAP.pop(depth, None)
    unregister_modality(depth)


def test_plugin_can_add_modality_and_task_type(depth_modality):
    depth, task_type = depth_modality
    assert Modality("depth") is depth is Modality.DEPTH
    assert depth in list(Modality)
    assert task_type.requires() == {Modality.IMAGE, Modality.SAMPLE_ID, depth}
    assert TaskStruct(name="d", task_type="depth_estimation").target is depth
    # registering again with the same name/value is harmless (plugin imported twice) ...
    assert register_modality("DEPTH", "depth") is depth
    # ... but a clash is refused by name
    with pytest.raises(ValueError, match="already taken by DEPTH"):
        register_modality("OTHER", "depth")

    class DepthLoader(ValueLoader):
        modality = depth

    register_modality_loader(depth, DepthLoader)
    assert isinstance(build_loaders()[depth], DepthLoader)
    with pytest.raises(TypeError, match="not a ModalityLoader"):
        register_modality_loader(depth, dict)


def test_plugin_registration_did_not_leak():
    assert "depth" not in {m.value for m in Modality}
    assert "depth_estimation" not in {t.value for t in TaskType}


def test_register_task_type_target_must_be_required():
    with pytest.raises(ValueError, match="must be in requires"):
        register_task_type("BAD_TYPE", "bad_type", requires=["class"], target="mask")
    assert "BAD_TYPE" not in TaskType.__members__


def test_plugin_modality_end_to_end(depth_modality, tmp_path):
    """A plugin modality flows through creation, verification and the datamodule."""
    import numpy as np
    import torch

    from pandemonium.tasks import (
        TASK_CREATORS,
        TaskDataModule,
        TaskVerificationError,
        create_task,
        load_task_struct,
    )
    from pandemonium.tasks.creators import register_taskcreator

    depth, task_type = depth_modality

    class DepthLoader(ValueLoader):
        modality = depth

    def verify_depth(entry, ctx):
        if min(entry) < 0:
            raise ValueError(f"negative depth {min(entry)}")

    register_modality_loader(depth, DepthLoader)
    MODALITY_VERIFIER_MAP[depth] = verify_depth

    @register_taskcreator("depth_toy", task_type=task_type)
    def create(writer, rng, num_samples=10, bad=False):
        for i in range(num_samples):
            values = [-1.0, 2.0] if bad and i == 3 else rng.random(2).tolist()
            writer.add_sample(image=rng.random((8, 8, 3)), extra={"depth": values})

    try:
        struct = load_task_struct("depth_toy", create_task("depth_toy", tmp_path).parents[1])
        assert struct.target is depth and depth in struct.modalities
        batch = next(iter(TaskDataModule(struct, batch_size=4).train_dataloader()))
        assert batch["depth"].shape == (4, 2) and batch["depth"].dtype == torch.float32
        assert np.all(batch["depth"].numpy() >= 0)
        with pytest.raises(TaskVerificationError, match="sample '000003' depth: negative depth -1.0"):
            create_task("depth_toy", tmp_path, force=True, bad=True)
    finally:
        TASK_CREATORS.pop("depth_toy")
