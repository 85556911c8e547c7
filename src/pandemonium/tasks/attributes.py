"""What a task holds (:class:`Modality`, with its :class:`Geometry`) and what is learned from it (:class:`TaskType`).

Both enums can grow at run time so that plugins can add a modality or task type without editing this
file (Python enums cannot be subclassed once they have members). A task type is described in full by
its :class:`pandemonium.tasktypes.TaskTypeSpec`; :meth:`TaskType.requires` and :attr:`TaskType.target`
read it.

>>> from pandemonium.tasks.attributes import Geometry, Modality, register_modality
>>> depth = register_modality("DEPTH", "depth", geometry=Geometry.DENSE)   # doctest: +SKIP

A new modality also needs a loader (:func:`pandemonium.tasks.loaders.register_modality_loader`) and a
verifier (an entry in :data:`pandemonium.tasks.verifiers.MODALITY_VERIFIER_MAP`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from enum import Enum
from typing import Any, TypeVar


class Modality(str, Enum):
    """One kind of per-sample data. The value is the key in ``task.json`` samples and in batches."""

    IMAGE = "image"
    MASK = "mask"
    BOXES = "boxes"
    CLASS = "class"
    CLASSES = "classes"
    VALUE = "value"
    SAMPLE_ID = "sample_id"


class Geometry(str, Enum):
    """How a modality follows a geometric transform of its image (flip, affine, crop, ...).

    * ``IMAGE``: the image itself (resampled bilinearly; the only modality photometric transforms touch),
    * ``DENSE``: a continuous per-pixel map (depth, heatmap); geometric transforms only, resampled
      with nearest neighbours so values at object edges never blend into values nobody measured,
    * ``LABEL_MAP``: per-pixel class indices (nearest neighbours),
    * ``BOXES``: ``(N, 4)`` xyxy pixel boxes (clipped; boxes pushed out are dropped with their labels),
    * ``POINTS``: ``(N, 2)`` xy pixel points,
    * ``NONE``: does not move (class, value, sample id).
    """

    IMAGE = "image"
    DENSE = "dense"
    LABEL_MAP = "label_map"
    BOXES = "boxes"
    POINTS = "points"
    NONE = "none"


#: Geometry of every modality; :func:`register_modality` adds entries. Unlisted modalities do not move.
MODALITY_GEOMETRY: dict[Modality, Geometry] = {
    Modality.IMAGE: Geometry.IMAGE,
    Modality.MASK: Geometry.LABEL_MAP,
    Modality.BOXES: Geometry.BOXES,
    Modality.CLASS: Geometry.NONE,
    Modality.CLASSES: Geometry.NONE,
    Modality.VALUE: Geometry.NONE,
    Modality.SAMPLE_ID: Geometry.NONE,
}

#: Kornia ``AugmentationSequential`` data key of each geometry that moves.
KORNIA_DATA_KEYS: dict[Geometry, str] = {
    Geometry.IMAGE: "input",
    Geometry.DENSE: "mask",
    Geometry.LABEL_MAP: "mask",
    Geometry.BOXES: "bbox_xyxy",
    Geometry.POINTS: "keypoints",
}


def modality_geometry(modality: Modality | str) -> Geometry:
    """How ``modality`` follows geometric transforms (``NONE`` when never declared)."""
    return MODALITY_GEOMETRY.get(Modality(modality), Geometry.NONE)


class _KorniaValid(Mapping):
    """Modality -> Kornia data key, derived from :data:`MODALITY_GEOMETRY` (one source of truth)."""

    def _items(self) -> dict[Modality, str]:
        return {m: KORNIA_DATA_KEYS[g] for m, g in MODALITY_GEOMETRY.items() if g in KORNIA_DATA_KEYS}

    def __getitem__(self, modality: Any) -> str:
        return self._items()[Modality(modality)]

    def __iter__(self) -> Iterator[Modality]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


#: Modalities that follow geometric augmentations, mapped to Kornia's ``data_keys`` names; derived from
#: each modality's :class:`Geometry`, so declaring the geometry is all a plugin does.
KORNIA_VALID_MODALITIES: Mapping[Modality, str] = _KorniaValid()


class TaskType(str, Enum):
    """What a model learns from a task; :meth:`requires` lists the modalities every sample must have."""

    CLASSIFICATION = "classification"
    MULTILABEL_CLASSIFICATION = "multilabel_classification"
    SEMANTIC_SEGMENTATION = "semantic_segmentation"
    DETECTION = "detection"
    REGRESSION = "regression"

    def requires(self) -> set[Modality]:
        """Modalities every sample of a task of this type must carry (from its ``TaskTypeSpec``).

        >>> sorted(m.value for m in TaskType.DETECTION.requires())
        ['boxes', 'image', 'sample_id']
        """
        from pandemonium.tasktypes import task_type_spec

        return set(task_type_spec(self).required_modalities)

    @property
    def target(self) -> Modality:
        """The modality a model of this task type predicts."""
        from pandemonium.tasktypes import task_type_spec

        return task_type_spec(self).target_modality


class _SpecView(Mapping):
    """Read-only ``TaskType -> ...`` view of the registered task type specs (kept for old imports)."""

    def __init__(self, attr: str) -> None:
        self._attr = attr

    def __getitem__(self, task_type: Any) -> Any:
        from pandemonium.tasktypes import task_type_spec

        try:
            spec = task_type_spec(task_type)
        except LookupError:
            raise KeyError(task_type) from None
        return getattr(spec, self._attr)

    def __iter__(self) -> Iterator[TaskType]:
        from pandemonium.tasktypes import registered_task_types

        return iter([s.enum for s in registered_task_types()])

    def __len__(self) -> int:
        return len(list(iter(self)))


#: TaskType -> frozenset of required modalities (a view of the specs).
TASK_TYPE_REQUIREMENTS: Mapping[TaskType, frozenset[Modality]] = _SpecView("required_modalities")
#: TaskType -> target modality (what ``TaskStruct.target`` returns; a view of the specs).
TASK_TYPE_TARGETS: Mapping[TaskType, Modality] = _SpecView("target_modality")

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
    member = enum_cls._member_map_.pop(name, None)
    if member is None:
        return
    enum_cls._member_names_.remove(name)
    enum_cls._value2member_map_.pop(member.value, None)
    type.__delattr__(enum_cls, name)


def register_modality(name: str, value: str, geometry: Geometry | str | None = None) -> Modality:
    """Add a :class:`Modality` member with its :class:`Geometry` (idempotent for the same name and value).

    ``geometry`` ``None`` keeps an earlier declaration (``NONE`` for a new modality).
    """
    modality = _extend_str_enum(Modality, name, value)
    if geometry is not None or modality not in MODALITY_GEOMETRY:
        MODALITY_GEOMETRY[modality] = Geometry(geometry or Geometry.NONE)
    return modality


def unregister_modality(value: Modality | str) -> None:
    """Remove a plugin modality and its geometry (tests; built-in modalities stay)."""
    modality = Modality._value2member_map_.get(str(getattr(value, "value", value)))
    if modality is None:
        return
    MODALITY_GEOMETRY.pop(modality, None)  # type: ignore[call-overload]
    _remove_enum_member(Modality, modality.name)


def add_task_type_member(name: str, value: str) -> TaskType:
    """The ``TaskType`` member ``name = value``, created when missing (``register_task_type`` calls this)."""
    return _extend_str_enum(TaskType, name, value)


def remove_task_type_member(name: str) -> None:
    """Remove a ``TaskType`` member added at run time (built-in members stay)."""
    if name in {"CLASSIFICATION", "MULTILABEL_CLASSIFICATION", "SEMANTIC_SEGMENTATION", "DETECTION", "REGRESSION"}:
        return
    _remove_enum_member(TaskType, name)


def register_task_type(
    name: str,
    value: str,
    requires: Iterable[Modality | str],
    target: Modality | str,
) -> TaskType:
    """Add a bare :class:`TaskType` (modalities only: tasks of it can be created and loaded).

    A task type that models train on, attacks target and reports show is a whole
    :class:`pandemonium.tasktypes.TaskTypeSpec`; register that with
    :func:`pandemonium.tasktypes.register_task_type` instead.
    """
    from pandemonium.tasktypes import TaskTypeSpec
    from pandemonium.tasktypes import register_task_type as register_spec

    required = {Modality(m).value for m in requires}
    target_modality = Modality(target)
    if target_modality.value not in required | {"image", "sample_id"}:
        raise ValueError(f"task type {value!r}: target {target_modality.value!r} must be in requires")
    return register_spec(TaskTypeSpec(name=value, enum_name=name, requires=frozenset(required),
                                      target=target_modality.value)).enum
