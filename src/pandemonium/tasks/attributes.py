"""What a task holds (:class:`Modality`) and what is learned from it (:class:`TaskType`).

Both enums can grow at run time so that plugins can add a modality or task type without editing this
file (Python enums cannot be subclassed once they have members):

>>> from pandemonium.tasks.attributes import Modality, TaskType, register_modality, register_task_type
>>> depth = register_modality("DEPTH", "depth")                          # doctest: +SKIP
>>> register_task_type("DEPTH_ESTIMATION", "depth_estimation",
...                    requires={Modality.IMAGE, depth}, target=depth)  # doctest: +SKIP

A new modality also needs a loader (:func:`pandemonium.tasks.loaders.register_modality_loader`) and a
verifier (an entry in :data:`pandemonium.tasks.verifiers.MODALITY_VERIFIER_MAP`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import TypeVar


class Modality(str, Enum):
    """One kind of per-sample data. The value is the key in ``task.json`` samples and in batches."""

    IMAGE = "image"
    MASK = "mask"
    BOXES = "boxes"
    CLASS = "class"
    CLASSES = "classes"
    VALUE = "value"
    SAMPLE_ID = "sample_id"


class TaskType(str, Enum):
    """What a model learns from a task; :meth:`requires` lists the modalities every sample must have."""

    CLASSIFICATION = "classification"
    MULTILABEL_CLASSIFICATION = "multilabel_classification"
    SEMANTIC_SEGMENTATION = "semantic_segmentation"
    DETECTION = "detection"
    REGRESSION = "regression"

    def requires(self) -> set[Modality]:
        """Modalities every sample of a task of this type must carry.

        >>> sorted(m.value for m in TaskType.DETECTION.requires())
        ['boxes', 'image', 'sample_id']
        """
        return set(TASK_TYPE_REQUIREMENTS[self])

    @property
    def target(self) -> Modality:
        """The modality a model of this task type predicts."""
        return TASK_TYPE_TARGETS[self]


#: Modalities each task type needs; plugins add entries through :func:`register_task_type`.
TASK_TYPE_REQUIREMENTS: dict[TaskType, frozenset[Modality]] = {
    TaskType.CLASSIFICATION: frozenset({Modality.IMAGE, Modality.CLASS, Modality.SAMPLE_ID}),
    TaskType.MULTILABEL_CLASSIFICATION: frozenset({Modality.IMAGE, Modality.CLASSES, Modality.SAMPLE_ID}),
    TaskType.SEMANTIC_SEGMENTATION: frozenset({Modality.IMAGE, Modality.MASK, Modality.SAMPLE_ID}),
    TaskType.DETECTION: frozenset({Modality.IMAGE, Modality.BOXES, Modality.SAMPLE_ID}),
    TaskType.REGRESSION: frozenset({Modality.IMAGE, Modality.VALUE, Modality.SAMPLE_ID}),
}

#: The target modality of each task type (what ``TaskStruct.target`` returns).
TASK_TYPE_TARGETS: dict[TaskType, Modality] = {
    TaskType.CLASSIFICATION: Modality.CLASS,
    TaskType.MULTILABEL_CLASSIFICATION: Modality.CLASSES,
    TaskType.SEMANTIC_SEGMENTATION: Modality.MASK,
    TaskType.DETECTION: Modality.BOXES,
    TaskType.REGRESSION: Modality.VALUE,
}

#: Modalities that follow geometric augmentations, mapped to Kornia's ``AugmentationSequential``
#: ``data_keys`` names. Every other modality is passed through augmentation unchanged.
KORNIA_VALID_MODALITIES: dict[Modality, str] = {
    Modality.IMAGE: "input",
    Modality.MASK: "mask",
    Modality.BOXES: "bbox_xyxy",
}

#: Batch key of the per-box class labels that travel with ``Modality.BOXES``.
BOX_LABELS_KEY = "labels"

_E = TypeVar("_E", bound=Enum)


def _extend_str_enum(enum_cls: type[_E], name: str, value: str) -> _E:
    # Python offers no public way to add a member to an existing Enum; this mirrors what
    # ``aenum.extend_enum`` does for str-mixin enums (value lookup, iteration, pickling all work).
    if not name.isidentifier() or not name.isupper():
        raise ValueError(f"enum member name must be an UPPER_CASE identifier, got {name!r}")
    existing = enum_cls._value2member_map_.get(value)
    if existing is not None:
        if existing.name != name:
            raise ValueError(f"{enum_cls.__name__} value {value!r} is already taken by {existing.name}")
        return existing  # registering twice (plugin loaded twice) is harmless
    if name in enum_cls._member_map_:
        raise ValueError(f"{enum_cls.__name__}.{name} already exists with another value")
    member = str.__new__(enum_cls, value)
    member._name_ = name
    member._value_ = value
    member.__objclass__ = enum_cls
    member._sort_order_ = len(enum_cls._member_names_)
    enum_cls._member_names_.append(name)
    enum_cls._member_map_[name] = member
    enum_cls._value2member_map_[value] = member
    type.__setattr__(enum_cls, name, member)
    return member


def _remove_enum_member(enum_cls: type[Enum], name: str) -> None:
    """Undo :func:`_extend_str_enum` (for tests that must not leak a registered member)."""
    member = enum_cls._member_map_.pop(name)
    enum_cls._member_names_.remove(name)
    enum_cls._value2member_map_.pop(member.value, None)
    type.__delattr__(enum_cls, name)


def register_modality(name: str, value: str) -> Modality:
    """Add a :class:`Modality` member (idempotent for the same name and value)."""
    return _extend_str_enum(Modality, name, value)


def register_task_type(
    name: str,
    value: str,
    requires: Iterable[Modality | str],
    target: Modality | str,
) -> TaskType:
    """Add a :class:`TaskType` member with its required modalities and target modality."""
    required = frozenset(Modality(m) for m in requires) | {Modality.IMAGE, Modality.SAMPLE_ID}
    target_modality = Modality(target)
    if target_modality not in required:
        raise ValueError(f"task type {value!r}: target {target_modality.value!r} must be in requires")
    task_type = _extend_str_enum(TaskType, name, value)
    TASK_TYPE_REQUIREMENTS[task_type] = required
    TASK_TYPE_TARGETS[task_type] = target_modality
    return task_type
