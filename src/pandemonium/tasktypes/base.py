"""``TaskTypeSpec``: everything pandemonium knows about one task type, in one registry entry.

A task type says which modalities a task must carry, which one a model predicts, how the model's head
is built and checked, which configs train and measure it (``configs/loss``, ``configs/metrics``), how
its outputs turn into metric inputs, prediction tables and report drawings, which attack preset and
attack losses fit it and how a patch's success is judged. Every layer asks the spec; nothing else
dispatches on the task type by name.

Register a new task type with one call (a plugin does it through ``registry.add_task_type(spec)``):

>>> from pandemonium.tasktypes import TaskTypeSpec, register_task_type, task_type_spec
>>> spec = TaskTypeSpec(name="toy_scores", target="value")
>>> register_task_type(spec) is spec
True
>>> task_type_spec("toy_scores").enum.value
'toy_scores'
>>> unregister_task_type("toy_scores")

Fields left ``None`` mean "this task type does not offer that": asking for it raises
:class:`TaskTypeFeatureError`, which names the task type and the field to fill in. A module that
declares a task type names its hook functions after the fields (``_head``, ``_metric_inputs``, ...) and
passes them with ``**hooks_in(globals())``, so the declaration states only data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pandemonium.errors import PandemoniumError
from pandemonium.tasks.attributes import (
    Modality,
    TaskType,
    add_task_type_member,
    remove_task_type_member,
)


class UnknownTaskTypeError(PandemoniumError, LookupError):
    """A task type name that no :class:`TaskTypeSpec` is registered for; the message lists the known ones."""

    def __str__(self) -> str:  # LookupError would otherwise quote the whole message
        return str(self.args[0])


class TaskTypeFeatureError(PandemoniumError, ValueError):
    """A task type is asked for something its spec does not provide (no head, no success metric, ...)."""


@dataclass(frozen=True)
class TaskTypeSpec:
    """One task type. Only ``name`` and ``target`` are mandatory.

    Attributes:
        name: the task type's value (``task.json`` ``task_type``), e.g. ``"classification"``.
        target: the modality value a model of this type predicts (one of ``requires``).
        requires: modality values every sample carries (``image``, ``sample_id`` and, when left empty,
            ``target`` are added).
        enum_name: the ``TaskType`` member name; defaults to ``name.upper()``.
        head: ``head(in_channels, num_classes, **options) -> nn.Module`` on top of the built-in
            backbone; its forward is ``head(features, image_size)``.
        model: ``model(num_classes=..., in_channels=..., mean=..., std=..., preset=..., ...) ->
            nn.Module`` that replaces backbone + head entirely (detection's ``CenterDetector``).
        output_fits: ``output_fits(output, num_classes, image_size, batch) -> bool``.
        expected_output: ``expected_output(num_classes, image_size, batch) -> str`` for error messages.
        loss, metrics: config names in ``configs/loss`` and ``configs/metrics`` (``CONFIGS_ROUTES``).
        metric_inputs: ``metric_inputs(outputs, batch, score_thr, nms_iou) -> (preds, target)``.
        scores: ``scores(outputs) -> Tensor`` of per-class probabilities for prediction tables.
        prediction_table: ``prediction_table(outputs, class_names, split)`` from
            :func:`pandemonium.models.training.run_model` outputs: a ``pandas.DataFrame`` (written as
            CSV), a list of dicts (JSON) or a dict of numpy arrays (``.npz``).
        report_predictions: ``report_predictions(outputs, class_names, threshold) -> list[dict]``,
            drawable per-image predictions (see ``pandemonium.report.data.Prediction``).
        report_truth: ``report_truth(targets, class_names, n) -> list[str]`` captions of the truth.
        output_kinds: what a foreign model may return for this type (``model.output.kind`` of an adopted
            model, see :class:`pandemonium.models.adapters.OutputAdapter`), e.g. ``("logits", "probabilities")``.
        adapt_output: ``adapt_output(y, adapter, image_size)``: a foreign model's raw output ``y`` of kind
            ``adapter.kind`` in this type's layout (``adapter`` offers ``tensor(y)``, ``scale_boxes`` and
            the adapter's options).
        attack_preset: name of the default preset in ``configs/attack`` for tasks of this type.
        attack_losses: class names of attack losses that consume this type's outputs.
        recognises: ``recognises(output) -> bool``: whether a model output has this type's layout
            (used where only the output is known, e.g. an evaluation without a task type).
        success_metric: a :class:`pandemonium.attack.success.SuccessMetric` class; when given, ``success``
            and ``headline`` default to its per-row columns and its headline.
        success: ``success(y_patch, y_control, targets, target_class=None, conf_threshold=0.5,
            iou_threshold=0.5) -> dict[str, Tensor(B)]`` per-sample attack success metrics.
        headline: ``headline(target_class) -> str``: the column of ``success`` that a patch is judged by.
        success_weights: success column -> the column holding how many trials a row stands for.
        description: one line for listings.
    """

    name: str
    target: str
    requires: frozenset[str] = frozenset()
    enum_name: str = ""
    head: Callable[..., Any] | None = None
    model: Callable[..., Any] | None = None
    output_fits: Callable[..., bool] | None = None
    expected_output: Callable[..., str] | None = None
    loss: str | None = None
    metrics: str | None = None
    metric_inputs: Callable[..., tuple[Any, Any]] | None = None
    scores: Callable[[Any], Any] | None = None
    prediction_table: Callable[..., Any] | None = None
    report_predictions: Callable[..., list[dict[str, Any]]] | None = None
    report_truth: Callable[..., list[str]] | None = None
    output_kinds: tuple[str, ...] = ()
    adapt_output: Callable[..., Any] | None = None
    attack_preset: str | None = None
    attack_losses: tuple[str, ...] = ()
    recognises: Callable[[Any], bool] | None = None
    success_metric: type | None = None
    success: Callable[..., dict[str, Any]] | None = None
    headline: Callable[[int | None], str] | None = None
    success_weights: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        target = str(getattr(self.target, "value", self.target))
        values = {str(getattr(m, "value", m)) for m in self.requires or (target,)} | {"image", "sample_id"}
        object.__setattr__(self, "requires", frozenset(values))
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "enum_name", self.enum_name or self.name.upper())
        object.__setattr__(self, "attack_losses", tuple(self.attack_losses))
        object.__setattr__(self, "output_kinds", tuple(self.output_kinds))
        if target not in values:
            raise TaskTypeFeatureError(f"task type {self.name!r}: target {target!r} must be in requires")
        if self.success_metric is not None:
            # the success module imports nothing of tasktypes at import time, so this is no cycle
            from pandemonium.attack.success.columns import SuccessColumns, SuccessHeadline

            if self.success is None:
                object.__setattr__(self, "success", SuccessColumns(self.success_metric))
            if self.headline is None:
                object.__setattr__(self, "headline", SuccessHeadline(self.success_metric))

    # -- views -----------------------------------------------------------------------------------
    @property
    def enum(self) -> TaskType:
        """The ``TaskType`` member (exists once the spec is registered)."""
        return TaskType(self.name)

    @property
    def required_modalities(self) -> frozenset[Modality]:
        return frozenset(Modality(m) for m in self.requires)

    @property
    def target_modality(self) -> Modality:
        return Modality(self.target)

    def need(self, feature: str) -> Any:
        """The spec field ``feature``, or :class:`TaskTypeFeatureError` naming task type and field."""
        value = getattr(self, feature)
        if value is None:
            raise TaskTypeFeatureError(
                f"task type {self.name!r} has no {feature!r}: set TaskTypeSpec.{feature} where the task type "
                "is registered"
            )
        return value

    def headline_metric(self, target_class: int | None = None) -> str:
        """The success column a patch against this task type is judged by (see :attr:`headline`)."""
        return str(self.need("headline")(target_class))

    def fits_output(self, output: Any, num_classes: int, image_size: tuple[int, int], batch: int) -> bool:
        """Whether a model ``output`` has this type's layout (``True`` when the spec cannot tell)."""
        return True if self.output_fits is None else bool(self.output_fits(output, num_classes, image_size, batch))

    def describe_output(self, num_classes: int, image_size: tuple[int, int], batch: int) -> str:
        if self.expected_output is None:
            return f"the output layout of {self.name} models"
        return self.expected_output(num_classes, image_size, batch)


#: the spec fields a declaring module may fill from functions named ``_<field>`` (see :func:`hooks_in`)
HOOK_FIELDS = ("head", "model", "output_fits", "expected_output", "metric_inputs", "scores", "prediction_table",
               "report_predictions", "report_truth", "recognises", "success", "headline", "adapt_output")


def hooks_in(namespace: Mapping[str, Any]) -> dict[str, Callable[..., Any]]:
    """``TaskTypeSpec`` kwargs from the functions of ``namespace`` named ``_<field>`` for a hook field.

    >>> def _scores(outputs): return outputs
    >>> sorted(hooks_in({"_scores": _scores, "_other": len}))
    ['scores']
    """
    return {name: namespace[f"_{name}"] for name in HOOK_FIELDS if callable(namespace.get(f"_{name}"))}


_SPECS: dict[str, TaskTypeSpec] = {}


def _key(task_type: Any) -> str:
    return str(getattr(task_type, "value", task_type))


def register_task_type(spec: TaskTypeSpec, replace: bool = False) -> TaskTypeSpec:
    """Register ``spec`` (and its ``TaskType`` member); registering an equal spec again is harmless.

    The modalities named in ``requires`` must exist (register a plugin's modality first).
    """
    if not isinstance(spec, TaskTypeSpec):
        raise TaskTypeFeatureError(f"register_task_type expects a TaskTypeSpec, got {type(spec).__name__}")
    unknown = sorted(m for m in spec.requires if m not in Modality._value2member_map_)
    if unknown:
        raise TaskTypeFeatureError(
            f"task type {spec.name!r} requires unknown modalities {unknown}; register them first "
            f"(known: {sorted(m.value for m in Modality)})"
        )
    existing = _SPECS.get(spec.name)
    if existing is not None and existing != spec and not replace:
        raise TaskTypeFeatureError(f"task type {spec.name!r} is already registered with another spec")
    add_task_type_member(spec.enum_name, spec.name)
    _SPECS[spec.name] = spec
    return spec


def unregister_task_type(name: Any) -> None:
    """Remove a registered task type and its ``TaskType`` member (tests, plugin unloading)."""
    spec = _SPECS.pop(_key(name), None)
    if spec is not None:
        remove_task_type_member(spec.enum_name)


def task_type_spec(task_type: Any) -> TaskTypeSpec:
    """The spec of ``task_type`` (a ``TaskType``, its value, or a spec).

    >>> task_type_spec("detection").target
    'boxes'
    """
    if isinstance(task_type, TaskTypeSpec):
        return task_type
    key = _key(task_type)
    spec = _SPECS.get(key)
    if spec is None:
        raise UnknownTaskTypeError(f"unknown task type {key!r}; registered task types: {', '.join(_SPECS) or 'none'}")
    return spec


def registered_task_types() -> tuple[TaskTypeSpec, ...]:
    """Every registered spec, built-ins first, then in registration order."""
    return tuple(_SPECS.values())


def specs_recognising(output: Any) -> list[TaskTypeSpec]:
    """Specs whose :attr:`TaskTypeSpec.recognises` accepts ``output``, in registration order."""
    return [s for s in _SPECS.values() if s.recognises is not None and s.success is not None and s.recognises(output)]


def label_name(class_names: Iterable[str], index: int) -> str:
    """The class name of ``index`` (its number when the task has no names for it)."""
    names = list(class_names)
    return names[index] if 0 <= index < len(names) else str(index)
