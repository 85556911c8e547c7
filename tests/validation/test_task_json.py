"""A corrupt ``task.json`` is one ``TaskFormatError`` naming the file and the field (issue 13)."""

from __future__ import annotations

import json

import pytest

from pandemonium.tasks.creators import load_task_struct
from pandemonium.tasks.errors import TaskFormatError


@pytest.mark.parametrize(("field", "value", "named"), [
    ("channels", None, "'channels'"),
    ("channels", "3", "'channels'"),
    ("image_size", [], "'image_size'"),
    ("image_size", [8, -8], "'image_size'"),
    ("samples", [{"id": 1}], "'samples'"),
    ("folds", [[1, 2]], "'folds'"),
    ("task_type", ["classification"], "'task_type'"),
    ("modalities", ["image", "no_such_modality"], "'modalities'"),
    ("stats", {"mean": [0.5], "std": [0.2, 0.2, 0.2]}, "'stats.mean'"),
    ("creation", {"seed": "abc"}, "'creation'"),
])
def test_corrupt_field_is_named(field, value, named, fake_task):
    task_file = fake_task.task_dir / "task.json"
    meta = json.loads(task_file.read_text())
    meta[field] = value
    task_file.write_text(json.dumps(meta))
    with pytest.raises(TaskFormatError) as info:
        load_task_struct(fake_task.name, task_file.parents[2])
    assert str(task_file) in str(info.value) and named in str(info.value)


def test_intact_task_json_loads(fake_task):
    struct = load_task_struct(fake_task.name, (fake_task.task_dir / "task.json").parents[2])
    assert struct.channels == fake_task.channels and tuple(struct.image_size) == tuple(fake_task.image_size)
