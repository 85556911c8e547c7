"""Task types as one object each: :class:`TaskTypeSpec` and its registry.

Importing this package registers the five built-in task types (classification, multilabel
classification, semantic segmentation, detection, regression); a plugin adds its own with
``registry.add_task_type(spec)`` (or :func:`register_task_type` directly). Every layer looks a task
type up with :func:`task_type_spec`.

>>> from pandemonium.tasktypes import task_type_spec
>>> task_type_spec("semantic_segmentation").loss
'cross_entropy_dice'
"""

from __future__ import annotations

from importlib import import_module

from pandemonium.tasktypes.base import (
    HOOK_FIELDS,
    TaskTypeFeatureError,
    TaskTypeSpec,
    UnknownTaskTypeError,
    hooks_in,
    label_name,
    register_task_type,
    registered_task_types,
    specs_recognising,
    task_type_spec,
    unregister_task_type,
)

# the built-in specs register themselves on import, in the order of the TaskType enum
for _module in ("classification", "multilabel", "segmentation", "detection", "regression"):
    import_module(f"pandemonium.tasktypes.{_module}")

__all__ = [
    "HOOK_FIELDS",
    "TaskTypeFeatureError",
    "TaskTypeSpec",
    "UnknownTaskTypeError",
    "hooks_in",
    "label_name",
    "register_task_type",
    "registered_task_types",
    "specs_recognising",
    "task_type_spec",
    "unregister_task_type",
]
