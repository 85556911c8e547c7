"""Each verifier rejects its bad case with a message naming task, sample, modality and the reason."""

import json
import shutil
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from pandemonium.tasks import TaskVerificationError, load_task_struct, verify_task
from pandemonium.tasks.errors import TaskFileError


def broken_copy(tiny_data_dir, tmp_path, name: str, edit: Callable[[dict], None]):
    """Copy a tiny task and let ``edit`` change its task.json; returns the data dir."""
    target = tmp_path / "tasks" / name
    shutil.copytree(tiny_data_dir / "tasks" / name, target)
    meta = json.loads((target / "task.json").read_text())
    edit(meta)
    (target / "task.json").write_text(json.dumps(meta))
    return tmp_path


def set_first(key, value):
    def edit(meta):
        meta["samples"][0][key] = value

    return edit


def first_id(tiny_data_dir, name):
    return json.loads((tiny_data_dir / "tasks" / name / "task.json").read_text())["samples"][0]["id"]


@pytest.mark.parametrize(
    "name,edit,message",
    [
        ("shapes_cls", set_first("class", 5), r"class: class label 5 outside \[0, 5\)"),
        ("shapes_cls", set_first("class", -1), r"class: class label -1 outside"),
        ("shapes_cls", set_first("class", "circle"), r"class: class label 'circle' is not an integer"),
        ("shapes_det", set_first("boxes", {"xyxy": [[0, 0, 49, 10]], "labels": [0]}),
         r"boxes: box 0 \[0, 0, 49, 10\] lies outside the 48x48 image"),
        ("shapes_det", set_first("boxes", {"xyxy": [[-1, 0, 10, 10]], "labels": [0]}), "lies outside"),
        ("shapes_det", set_first("boxes", {"xyxy": [[10, 5, 4, 9]], "labels": [0]}),
         r"box 0 .* is empty or inverted \(need x1<x2, y1<y2\)"),
        ("shapes_det", set_first("boxes", {"xyxy": [[1, 5, 4, 5]], "labels": [0]}), "empty or inverted"),
        ("shapes_det", set_first("boxes", {"xyxy": [[1, 1, 4, 5]], "labels": [9]}), r"box 0 label 9 outside"),
        ("shapes_det", set_first("boxes", {"xyxy": [[1, 1, 4, 5]], "labels": []}), "1 boxes but 0 labels"),
        ("shapes_det", set_first("boxes", {"xyxy": [[1, 1, 4]], "labels": [0]}), "is not 4 finite numbers"),
        ("shapes_det", set_first("boxes", [[1, 1, 4, 5]]), "boxes entry must be"),
        ("shapes_cls", lambda m: m["samples"][0].pop("class"), r"lacks \['class'\]"),
        ("shapes_cls", lambda m: m["samples"][1].update(id=m["samples"][0]["id"]), "duplicate sample id"),
        ("shapes_cls", lambda m: m["folds"][0].append(m["test"][0]), r"is in both fold 0 and test"),
        ("shapes_cls", lambda m: m["test"].append("nope"), r"test names unknown sample 'nope'"),
        ("shapes_cls", lambda m: m.update(class_names=[]), "class_names is empty"),
    ],
)
def test_bad_sample_is_named(tiny_data_dir, tmp_path, name, edit, message):
    data_dir = broken_copy(tiny_data_dir, tmp_path, name, edit)
    with pytest.raises(TaskVerificationError, match=message) as info:
        load_task_struct(name, data_dir)
    assert f"task {name!r}" in str(info.value)


def test_message_names_the_sample(tiny_data_dir, tmp_path):
    data_dir = broken_copy(tiny_data_dir, tmp_path, "shapes_cls", set_first("class", 7))
    sid = first_id(tiny_data_dir, "shapes_cls")
    with pytest.raises(TaskVerificationError, match=f"task 'shapes_cls': sample '{sid}' class:"):
        verify_task(data_dir / "tasks" / "shapes_cls")


def _multilabel_meta(meta):
    meta["task_type"] = "multilabel_classification"
    for s in meta["samples"]:
        s["classes"] = [1, 0, 0, 0, 1]


def _value_meta(value):
    def edit(meta):
        meta["task_type"] = "regression"
        for s in meta["samples"]:
            s["value"] = 0.5
        meta["samples"][0]["value"] = value

    return edit


def test_multilabel_and_regression_verifiers(tiny_data_dir, tmp_path):
    good = broken_copy(tiny_data_dir, tmp_path / "ok", "shapes_cls", _multilabel_meta)
    assert load_task_struct("shapes_cls", good).task_type.value == "multilabel_classification"

    def wrong_length(meta):
        _multilabel_meta(meta)
        meta["samples"][2]["classes"] = [1, 0]

    def not_binary(meta):
        _multilabel_meta(meta)
        meta["samples"][2]["classes"] = [2, 0, 0, 0, 0]

    for i, (edit, message) in enumerate([(wrong_length, "list of length 5, got 2"), (not_binary, "only 0 and 1")]):
        data_dir = broken_copy(tiny_data_dir, tmp_path / f"ml{i}", "shapes_cls", edit)
        with pytest.raises(TaskVerificationError, match=f"classes: multi-hot classes must .*{message}"):
            load_task_struct("shapes_cls", data_dir)
    assert load_task_struct("shapes_cls", broken_copy(tiny_data_dir, tmp_path / "v", "shapes_cls", _value_meta(1.5)))
    data_dir = broken_copy(tiny_data_dir, tmp_path / "nan", "shapes_cls", _value_meta(float("nan")))
    with pytest.raises(TaskVerificationError, match="value: regression value nan must be finite"):
        load_task_struct("shapes_cls", data_dir)


def _replace_file(data_dir, name, sample_index, key, array):
    meta = json.loads((data_dir / "tasks" / name / "task.json").read_text())
    sample = meta["samples"][sample_index]
    Image.fromarray(array).save(data_dir / "tasks" / name / sample[key])
    return sample["id"]


def test_mask_size_must_match_image(tiny_data_dir, tmp_path):
    data_dir = broken_copy(tiny_data_dir, tmp_path, "shapes_seg", lambda m: None)
    sid = _replace_file(data_dir, "shapes_seg", 3, "mask", np.zeros((16, 32), np.uint8))
    with pytest.raises(TaskVerificationError, match=f"sample '{sid}' mask: mask is 16x32 but the image is 32x32"):
        load_task_struct("shapes_seg", data_dir)


def test_mask_labels_in_range_deep(tiny_data_dir, tmp_path):
    data_dir = broken_copy(tiny_data_dir, tmp_path, "shapes_seg", lambda m: None)
    mask = np.zeros((32, 32), np.uint8)
    mask[3, 3] = 6
    sid = _replace_file(data_dir, "shapes_seg", 4, "mask", mask)
    load_task_struct("shapes_seg", data_dir)  # quick verification reads headers only
    with pytest.raises(TaskVerificationError, match=rf"sample '{sid}' mask: mask labels in \[0, 6\] outside \[0, 6\)"):
        load_task_struct("shapes_seg", data_dir, verify="deep")


def test_mask_must_be_single_channel(tiny_data_dir, tmp_path):
    data_dir = broken_copy(tiny_data_dir, tmp_path, "shapes_seg", lambda m: None)
    _replace_file(data_dir, "shapes_seg", 0, "mask", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(TaskVerificationError, match="mask must be single-channel"):
        load_task_struct("shapes_seg", data_dir)


def test_image_channels_must_match(tiny_data_dir, tmp_path):
    data_dir = broken_copy(tiny_data_dir, tmp_path, "digits", lambda m: None)
    sid = _replace_file(data_dir, "digits", 0, "image", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(TaskVerificationError, match=f"sample '{sid}' image: image has 3 channels, task declares 1"):
        load_task_struct("digits", data_dir)


def test_missing_mask_file(tiny_data_dir, tmp_path):
    data_dir = broken_copy(tiny_data_dir, tmp_path, "shapes_seg", lambda m: None)
    meta = json.loads((data_dir / "tasks" / "shapes_seg" / "task.json").read_text())
    (data_dir / "tasks" / "shapes_seg" / meta["samples"][5]["mask"]).unlink()
    with pytest.raises(TaskFileError, match=r"sample '000005' file .*masks/000005\.png is missing"):
        load_task_struct("shapes_seg", data_dir)


def test_valid_tasks_pass_deep_verification(tiny_data_dir):
    for name in ("shapes_cls", "shapes_seg", "shapes_det", "digits"):
        assert verify_task(tiny_data_dir / "tasks" / name, deep=True).name == name
