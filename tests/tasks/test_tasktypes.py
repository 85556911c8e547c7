"""TaskTypeSpec registry: the five built-ins, lookups, errors, and a registered spec driving TaskType."""

from __future__ import annotations

import pytest

from pandemonium.errors import PandemoniumError
from pandemonium.tasks import Modality, TaskStruct, TaskType
from pandemonium.tasktypes import (
    TaskTypeFeatureError,
    TaskTypeSpec,
    UnknownTaskTypeError,
    register_task_type,
    registered_task_types,
    task_type_spec,
    unregister_task_type,
)


def test_every_builtin_task_type_is_a_spec():
    assert [s.name for s in registered_task_types()][:5] == [t.value for t in list(TaskType)[:5]]
    for task_type in list(TaskType)[:5]:
        spec = task_type_spec(task_type)
        assert spec is task_type_spec(task_type.value)
        assert spec.enum is task_type
        assert task_type.requires() == set(spec.required_modalities)
        assert task_type.target is spec.target_modality
        assert spec.loss and spec.metrics and spec.metric_inputs is not None
        assert (spec.head is None) != (spec.model is None), task_type


def test_unknown_task_type_lists_the_known_ones():
    with pytest.raises(UnknownTaskTypeError, match="'nope'.*classification.*detection") as info:
        task_type_spec("nope")
    assert isinstance(info.value, PandemoniumError)


def test_missing_feature_names_type_and_field():
    with pytest.raises(TaskTypeFeatureError, match="'regression' has no 'headline'"):
        task_type_spec("regression").headline_metric()
    assert task_type_spec("classification").headline_metric(3) == "targeted_success"
    assert task_type_spec("classification").headline_metric() == "untargeted_success"


def test_registered_spec_drives_the_enum_and_structs():
    spec = TaskTypeSpec(name="toy_counting", requires=frozenset({"value"}), target="value")
    register_task_type(spec)
    try:
        assert TaskType("toy_counting").name == "TOY_COUNTING"
        assert TaskType("toy_counting").requires() == {Modality.IMAGE, Modality.VALUE, Modality.SAMPLE_ID}
        assert TaskStruct(name="t", task_type="toy_counting").target is Modality.VALUE
        assert register_task_type(spec) is spec  # again: harmless
        with pytest.raises(TaskTypeFeatureError, match="already registered"):
            register_task_type(TaskTypeSpec(name="toy_counting", requires=frozenset({"class"}), target="class"))
    finally:
        unregister_task_type("toy_counting")
    assert "toy_counting" not in {t.value for t in TaskType}


def test_spec_refuses_unknown_modalities_and_stray_targets():
    with pytest.raises(TaskTypeFeatureError, match="unknown modalities"):
        register_task_type(TaskTypeSpec(name="toy_bad", requires=frozenset({"no_such_modality"}),
                                        target="no_such_modality"))
    with pytest.raises(TaskTypeFeatureError, match="must be in requires"):
        TaskTypeSpec(name="toy_bad", requires=frozenset({"class"}), target="mask")
