"""Field-by-field check of a parsed ``task.json``: one :class:`TaskFormatError` naming the file and the
field, before any field is used (so a corrupt file never surfaces as a ``TypeError`` or ``IndexError``).

>>> check_task_meta({"name": "toy", "task_type": "classification", "class_names": ["a"], "image_size": [8],
...                  "channels": 3, "samples": [], "folds": [], "test": []}, "task.json", "toy")
Traceback (most recent call last):
...
pandemonium.tasks.errors.TaskFormatError: task 'toy': task.json field 'image_size' must be [height, width], two positive integers, got [8]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from pandemonium.tasks.attributes import Modality, TaskType
from pandemonium.tasks.errors import TaskFormatError

__all__ = ["check_task_meta"]


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _size(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_int(v) and v > 0 for v in value)


def _samples(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(s, dict) and isinstance(s.get("id"), str) for s in value)


def _modalities(value: Any) -> bool:
    return _strings(value) and all(v in Modality._value2member_map_ for v in value)


def _task_type(value: Any) -> bool:
    return isinstance(value, str) and value in TaskType._value2member_map_


#: field -> (check, what the field must be); optional fields are checked only when present
FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format_version": (_int, "an integer"),
    "name": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "task_type": (_task_type, "a registered task type"),
    "class_names": (lambda v: isinstance(v, list) and all(isinstance(c, str | int) for c in v),
                    "a list of class names"),
    "image_size": (_size, "[height, width], two positive integers"),
    "channels": (lambda v: _int(v) and v > 0, "a positive integer"),
    "samples": (_samples, "a list of objects, each with a string 'id'"),
    "folds": (lambda v: isinstance(v, list) and all(_strings(f) for f in v), "a list of lists of sample ids"),
    "test": (_strings, "a list of sample ids"),
    "modalities": (_modalities, "a list of registered modality names"),
    "stats": (lambda v: isinstance(v, dict), "an object with 'mean' and 'std'"),
    "creation": (lambda v: isinstance(v, dict) and _int(v.get("seed", 0)), "an object with an integer 'seed'"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "license": (lambda v: isinstance(v, str), "a string"),
    "keywords": (lambda v: isinstance(v, list), "a list"),
}


def check_task_meta(meta: Mapping[str, Any], file: str | os.PathLike, task: str) -> None:
    """Raise :class:`TaskFormatError` naming ``task``, ``file`` and the first field of ``meta`` that has a
    wrong type or value (required keys are checked by the caller)."""

    def fail(field: str, what: str, value: Any) -> None:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise TaskFormatError(f"task {task!r}: {file} field {field!r} must be {what}, got {shown}")

    for field, (ok, what) in FIELDS.items():
        if field in meta and not ok(meta[field]):
            if field == "task_type":
                what = f"one of {', '.join(TaskType._value2member_map_)}"
            fail(field, what, meta[field])
    stats = meta.get("stats") or {}
    for key in ("mean", "std"):
        value = stats.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == meta["channels"]
                                      and all(_number(v) for v in value)):
            fail(f"stats.{key}", f"a list of {meta['channels']} numbers (one per channel)", value)
