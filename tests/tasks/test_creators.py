import json
import shutil

import numpy as np
import pytest

from pandemonium.tasks import (
    TASK_CREATORS,
    TMP_PREFIX,
    TaskCreationError,
    TaskFileError,
    TaskFormatError,
    TaskNameError,
    TaskNotFoundError,
    TaskType,
    create_task,
    list_creatable,
    list_tasks,
    load_task_struct,
    register_taskcreator,
)
from pandemonium.tasks.format import read_task_json, split_ids

from .conftest import TINY, folder_digest


@pytest.mark.parametrize("name", list(TINY))
def test_builtin_tasks_are_deterministic_per_seed(name, tiny_data_dir, tmp_path):
    again = create_task(name, tmp_path / "a", seed=0, **TINY[name])
    assert folder_digest(again) == folder_digest(tiny_data_dir / "tasks" / name)
    other = create_task(name, tmp_path / "b", seed=1, **TINY[name])
    assert folder_digest(other) != folder_digest(again)


@pytest.mark.parametrize("name", list(TINY))
def test_builtin_task_metadata(name, tiny_structs):
    struct = tiny_structs[name]
    meta = read_task_json(struct.task_dir)
    assert struct.name == name
    assert struct.num_samples == len(meta["samples"])
    assert meta["license"] and meta["description"]
    assert meta["creation"]["seed"] == 0 and meta["creation"]["creator"] == name
    assert meta["creation"]["kwargs"]["num_samples"] == TINY[name]["num_samples"]
    size = TINY[name]["image_size"]
    assert struct.image_size == (size, size)
    assert struct.channels == (1 if name == "digits" else 3)
    assert len(struct.mean) == struct.channels and all(0 < s < 1 for s in struct.std)
    if name == "shapes_seg":
        assert struct.class_names[0] == "background" and struct.num_classes == 6
    elif name == "digits":
        assert struct.num_classes == 10
    else:
        assert struct.class_names == ["circle", "square", "triangle", "star", "cross"]


def test_shapes_det_has_one_to_three_boxes(tiny_structs):
    meta = read_task_json(tiny_structs["shapes_det"].task_dir)
    counts = [len(s["boxes"]["xyxy"]) for s in meta["samples"]]
    assert min(counts) >= 1 and max(counts) <= 3 and len(set(counts)) > 1


def test_shapes_cls_classes_balanced(tiny_structs):
    meta = read_task_json(tiny_structs["shapes_cls"].task_dir)
    counts = np.bincount([s["class"] for s in meta["samples"]], minlength=5)
    assert counts.tolist() == [8] * 5


def test_folds_disjoint_cover_and_stratified(tiny_structs):
    struct = tiny_structs["shapes_cls"]
    meta = read_task_json(struct.task_dir)
    folds, test = meta["folds"], meta["test"]
    assert len(folds) == 5 and struct.num_folds == 5
    members = [i for f in folds for i in f] + test
    assert len(members) == len(set(members)) == struct.num_samples
    assert len(test) == 8  # 20 % of 40
    # stratified: each class contributes 1.6 -> 1 or 2 test samples; folds likewise balanced
    labels = {s["id"]: s["class"] for s in meta["samples"]}
    assert sorted(np.bincount([labels[i] for i in test], minlength=5).tolist()) == [1, 1, 2, 2, 2]
    for fold in folds:
        assert len(fold) in (6, 7) and len({labels[i] for i in fold}) == 5
    for fold in range(5):
        train, val = split_ids(meta, "train", fold), split_ids(meta, "val", fold)
        assert not set(train) & set(val) and not set(train + val) & set(test)
        assert len(train) + len(val) == 32
    with pytest.raises(ValueError, match="fold 5 out of range"):
        split_ids(meta, "val", 5)


def test_folds_depend_on_seed_only(tmp_path):
    a = read_task_json(create_task("shapes_cls", tmp_path / "a", seed=4, num_samples=20, image_size=16))
    b = read_task_json(create_task("shapes_cls", tmp_path / "b", seed=4, num_samples=20, image_size=16))
    c = read_task_json(create_task("shapes_cls", tmp_path / "c", seed=5, num_samples=20, image_size=16))
    assert a["folds"] == b["folds"] and a["test"] == b["test"]
    assert (a["folds"], a["test"]) != (c["folds"], c["test"])


def test_create_skips_existing_unless_forced(tmp_path):
    path = create_task("shapes_cls", tmp_path, seed=0, num_samples=10, image_size=16)
    marker = path / "images" / "000000.png"
    before = marker.read_bytes()
    assert create_task("shapes_cls", tmp_path, seed=1, num_samples=10, image_size=16) == path
    assert marker.read_bytes() == before  # skipped: nothing rewritten
    create_task("shapes_cls", tmp_path, seed=1, force=True, num_samples=10, image_size=16)
    assert marker.read_bytes() != before
    assert read_task_json(path)["creation"]["seed"] == 1
    assert list_tasks(tmp_path) == ["shapes_cls"]
    assert not [p for p in (tmp_path / "tasks").iterdir() if p.name.startswith(TMP_PREFIX)]


@pytest.fixture
def failing_creator():
    @register_taskcreator("explodes_midway", task_type=TaskType.CLASSIFICATION, class_names=["a"])
    def create(writer, rng, fail_after=3):
        for i in range(10):
            if i == fail_after:
                raise RuntimeError("disk on fire")
            writer.add_sample(image=rng.random((8, 8, 3)), cls=0)

    yield "explodes_midway"
    TASK_CREATORS.pop("explodes_midway")


def test_crashing_creator_leaves_nothing_and_keeps_old_task(tmp_path, failing_creator):
    with pytest.raises(TaskCreationError, match="explodes_midway.*disk on fire"):
        create_task(failing_creator, tmp_path)
    assert list((tmp_path / "tasks").iterdir()) == [tmp_path / "tasks" / f".{failing_creator}.lock"]
    # an existing finished task survives a failed forced re-creation
    good = create_task(failing_creator, tmp_path, fail_after=99)
    digest = folder_digest(good)
    with pytest.raises(TaskCreationError):
        create_task(failing_creator, tmp_path, force=True, fail_after=2)
    assert folder_digest(good) == digest
    with pytest.raises(TaskCreationError, match="rejected its arguments"):
        create_task(failing_creator, tmp_path, force=True, no_such_kwarg=1)


@pytest.mark.parametrize("bad", ["a/b", "a\\b", "a+b", "a b", "a:b", "", ".hidden", "tab\tname"])
def test_bad_task_names_are_refused_by_name(bad, tmp_path):
    with pytest.raises(TaskNameError, match="invalid task name"):
        create_task(bad, tmp_path)
    with pytest.raises(TaskNameError, match="invalid task name"):
        load_task_struct(bad, tmp_path)


def test_separator_is_named_in_error(tmp_path):
    with pytest.raises(TaskNameError, match=r"'shapes_cls\+digits'.*contains '\+'"):
        load_task_struct("shapes_cls+digits", tmp_path)


def test_unknown_task_lists_known_and_creatable(tiny_data_dir):
    with pytest.raises(TaskNotFoundError) as info:
        load_task_struct("shapes_clss", tiny_data_dir)
    message = str(info.value)
    assert "'shapes_clss'" in message and "shapes_cls" in message and "digits" in message
    with pytest.raises(TaskNotFoundError, match="creatable tasks: .*shapes_det"):
        create_task("no_such_task", tiny_data_dir)
    assert {"shapes_cls", "shapes_seg", "shapes_det", "digits"} <= set(list_creatable())


@pytest.fixture
def task_copy(tiny_data_dir, tmp_path):
    """A private copy of the tiny shapes_cls task that a test may break."""
    shutil.copytree(tiny_data_dir / "tasks" / "shapes_cls", tmp_path / "tasks" / "shapes_cls")
    return tmp_path


def test_corrupt_json_names_task_and_file(task_copy):
    file = task_copy / "tasks" / "shapes_cls" / "task.json"
    file.write_text(file.read_text()[:200])
    with pytest.raises(TaskFormatError, match=r"task 'shapes_cls': .*task\.json is not valid JSON"):
        load_task_struct("shapes_cls", task_copy)


def test_json_missing_key_is_named(task_copy):
    file = task_copy / "tasks" / "shapes_cls" / "task.json"
    meta = json.loads(file.read_text())
    del meta["folds"]
    file.write_text(json.dumps(meta))
    with pytest.raises(TaskFormatError, match=r"lacks required keys \['folds'\]"):
        load_task_struct("shapes_cls", task_copy)


def test_missing_task_json_is_named(task_copy):
    (task_copy / "tasks" / "shapes_cls" / "task.json").unlink()
    with pytest.raises(TaskFormatError, match="task 'shapes_cls'.*does not exist"):
        load_task_struct("shapes_cls", task_copy)


def test_missing_sample_file_names_task_and_file(task_copy):
    (task_copy / "tasks" / "shapes_cls" / "images" / "000007.png").unlink()
    with pytest.raises(TaskFileError, match=r"task 'shapes_cls': sample '000007' file .*000007\.png is missing"):
        load_task_struct("shapes_cls", task_copy)


def test_corrupt_image_found_by_deep_verification(task_copy):
    (task_copy / "tasks" / "shapes_cls" / "images" / "000003.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(TaskFileError, match=r"sample '000003' cannot decode .*000003\.png"):
        load_task_struct("shapes_cls", task_copy, verify="deep")


def test_digits_subset_and_full(tmp_path):
    struct = load_task_struct("digits", create_task("digits", tmp_path, num_samples=25).parent.parent)
    assert struct.num_samples == 25
