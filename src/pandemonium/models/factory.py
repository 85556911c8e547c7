"""Assemble a model for a task from its ``TaskStruct`` and the ``model`` config group.

The ``model`` config is data: ``_target_`` names any callable returning an ``nn.Module`` (a class or a
factory function) and the remaining keys are its kwargs. Task-derived arguments (``struct``,
``num_classes``, ``in_channels``, ``task_type``, ``image_size``, ``mean``, ``std``) are passed when the
callable's signature accepts them, so plain user modules work without knowing about pandemonium.
``torchscript: <path>`` loads a TorchScript file instead. Whatever is built, its output on a dummy batch
is checked against the task type, so a mismatch fails here with one clear message instead of deep inside
a loss later.

>>> model = build_model(struct, {"_target_": "pandemonium.models.factory.task_model", "preset": "tiny"})  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pandemonium.errors import PandemoniumError
from pandemonium.models.backbones import Normalize, SmallCNN
from pandemonium.tasktypes import TaskTypeSpec, registered_task_types, task_type_spec

DEFAULT_MODEL_CONFIG: dict[str, Any] = {"_target_": "pandemonium.models.factory.task_model", "preset": "small"}


class ModelBuildError(PandemoniumError, ValueError):
    """A model could not be built for a task, or its output does not fit the task type."""


@dataclass
class StructSummary:
    """The part of a ``TaskStruct`` a model needs; stored inside model artifacts to rebuild them."""

    name: str
    task_type: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: list[float]
    std: list[float]
    class_names: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)

    @classmethod
    def from_struct(cls, struct: Any) -> StructSummary:
        if isinstance(struct, StructSummary):
            return struct
        if isinstance(struct, Mapping):
            data = dict(struct)
            data["image_size"] = tuple(data["image_size"])
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        task_type = _value(getattr(struct, "task_type", None))
        modalities = getattr(struct, "modalities", []) or []
        if isinstance(modalities, Mapping):
            modalities = list(modalities)
        channels = int(getattr(struct, "channels", 3) or 3)
        return cls(
            name=str(getattr(struct, "name", "?")),
            task_type=str(task_type),
            num_classes=int(getattr(struct, "num_classes", 0) or 0),
            channels=channels,
            image_size=tuple(int(s) for s in getattr(struct, "image_size", (64, 64))),
            mean=[float(m) for m in (getattr(struct, "mean", None) or [0.5] * channels)],
            std=[float(s) for s in (getattr(struct, "std", None) or [0.25] * channels)],
            class_names=[str(c) for c in (getattr(struct, "class_names", None) or [])],
            modalities=sorted(str(_value(m)) for m in modalities),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        return data


def _value(x: Any) -> Any:
    """Enum member -> its value; anything else unchanged."""
    return getattr(x, "value", x)


def spec_of(info: StructSummary) -> TaskTypeSpec:
    """The task type spec of a task, or :class:`ModelBuildError` naming the task and the known types."""
    try:
        return task_type_spec(info.task_type)
    except LookupError:
        known = [s.name for s in registered_task_types()]
        raise ModelBuildError(f"task {info.name!r}: unknown task type {info.task_type!r}; models exist for {known}") from None


def required_modalities(struct: Any) -> set[str]:
    """Modalities the task type of ``struct`` requires (from its ``TaskTypeSpec``)."""
    return set(spec_of(StructSummary.from_struct(struct)).requires)


def check_task_modalities(struct: Any) -> None:
    """Raise :class:`ModelBuildError` if ``struct`` lacks a modality its task type needs."""
    info = StructSummary.from_struct(struct)
    spec = spec_of(info)
    if spec.head is None and spec.model is None:
        raise ModelBuildError(
            f"task {info.name!r}: task type {info.task_type!r} names no model head; set TaskTypeSpec.head "
            "(or TaskTypeSpec.model) where it is registered, or give a model _target_"
        )
    if not info.modalities:  # a bare summary (e.g. rebuilt from an artifact) has nothing to check
        return
    present = set(info.modalities)
    # models never see sample ids; they are the datamodule's business
    needed = required_modalities(struct) - {"sample_id"}
    missing = needed - present
    if missing:
        raise ModelBuildError(
            f"task {info.name!r} of type {info.task_type!r} lacks modalities {sorted(missing)}: "
            f"a {info.task_type} model needs {sorted(needed)} but the task has {sorted(present)}"
        )


class TaskModel(nn.Module):
    """Normalisation + backbone + the head of one task type (``TaskTypeSpec.head``).

    Takes images in [0, 1]; see :mod:`pandemonium.models.heads` for output layouts.
    """

    def __init__(
        self,
        task_type: str,
        num_classes: int,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        preset: str = "small",
        width: int | None = None,
        depth: int | None = None,
        blocks_per_stage: int = 1,
        dropout: float = 0.1,
        decoder_channels: int = 32,
        head_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.task_type = str(_value(task_type))
        self.normalize = Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)
        self.backbone = SmallCNN(in_channels, preset=preset, width=width, depth=depth, blocks_per_stage=blocks_per_stage)
        spec = task_type_spec(self.task_type)
        if spec.head is None:
            raise ModelBuildError(f"TaskModel: task type {self.task_type!r} has no head (TaskTypeSpec.head)")
        self.head: nn.Module = spec.head(self.backbone.out_channels, num_classes, dropout=dropout,
                                         decoder_channels=decoder_channels, **dict(head_options or {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x)), tuple(x.shape[-2:]))


def task_model(
    struct: Any,
    preset: str = "small",
    width: int | None = None,
    depth: int | None = None,
    blocks_per_stage: int = 1,
    dropout: float = 0.1,
    decoder_channels: int = 32,
    detection: Mapping[str, Any] | None = None,
    head_options: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The built-in model for ``struct``: :class:`TaskModel` with the task type's head, or the task type's
    own model (``TaskTypeSpec.model``; detection's :class:`~pandemonium.models.detector.CenterDetector`).

    ``detection`` holds extra :class:`CenterDetector` kwargs (``stride``, ``head_channels``);
    ``head_options`` extra kwargs of any task type's head or model.
    """
    info = StructSummary.from_struct(struct)
    spec = spec_of(info)
    common = {"in_channels": info.channels, "mean": info.mean, "std": info.std, "preset": preset, "width": width, "depth": depth}
    if spec.model is not None:
        options = {**dict(detection or {}), **dict(head_options or {})}
        return spec.model(num_classes=info.num_classes, **common, **options)
    return TaskModel(
        info.task_type,
        info.num_classes,
        blocks_per_stage=blocks_per_stage,
        dropout=dropout,
        decoder_channels=decoder_channels,
        head_options=head_options,
        **common,
    )


def _to_container(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return dict(DEFAULT_MODEL_CONFIG)
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a hard dependency
        pass
    return dict(cfg)


def model_config_from(cfg: Any) -> dict[str, Any]:
    """The model config as a plain dict, given either the ``model`` node or the whole run config."""
    data = _to_container(cfg)
    if "_target_" not in data and "torchscript" not in data and "model" in data:
        data = _to_container(data["model"])
    if not data.get("_target_") and not data.get("torchscript"):
        data = {**DEFAULT_MODEL_CONFIG, **{k: v for k, v in data.items() if k not in ("_target_", "torchscript")}}
    return data


def _import_object(path: str) -> Any:
    from hydra.utils import get_object

    return get_object(path)


def _task_kwargs(info: StructSummary, struct: Any) -> dict[str, Any]:
    return {
        "struct": struct,
        "num_classes": info.num_classes,
        "in_channels": info.channels,
        "task_type": info.task_type,
        "image_size": info.image_size,
        "mean": info.mean,
        "std": info.std,
    }


def load_torchscript(source: str | Path | bytes, task_name: str) -> torch.jit.ScriptModule:
    """Load a TorchScript module from a file path or bytes, raising :class:`ModelBuildError` on failure."""
    try:
        if isinstance(source, bytes | bytearray):
            return torch.jit.load(io.BytesIO(source), map_location="cpu")
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as err:  # torch raises RuntimeError/ValueError/... depending on how the file is broken
        where = "stored TorchScript bytes" if isinstance(source, bytes | bytearray) else f"TorchScript file {str(source)!r}"
        raise ModelBuildError(f"task {task_name!r}: could not load {where} ({type(err).__name__}: {err})") from None


def build_model(struct: Any, cfg: Any = None, check_output: bool = True) -> nn.Module:
    """Build the model for ``struct`` as described by ``cfg`` (the ``model`` node or the whole config).

    Raises :class:`ModelBuildError` naming the task when the task lacks the modalities its type needs,
    the ``_target_`` does not import or fails, the TorchScript file does not load, or the model output
    does not fit the task type.
    """
    check_task_modalities(struct)
    info = StructSummary.from_struct(struct)
    model_cfg = model_config_from(cfg)
    if model_cfg.get("torchscript"):
        model: Any = load_torchscript(model_cfg["torchscript"], info.name)
    else:
        target = model_cfg["_target_"]
        try:
            factory = _import_object(target)
        except Exception as err:
            raise ModelBuildError(f"task {info.name!r}: model _target_ {target!r} does not import ({err})") from None
        kwargs = {k: v for k, v in model_cfg.items() if k not in ("_target_", "torchscript")}
        kwargs = _with_task_kwargs(factory, kwargs, info, struct)
        try:
            model = factory(**kwargs)
        except Exception as err:
            raise ModelBuildError(f"task {info.name!r}: model _target_ {target!r} failed: {type(err).__name__}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ModelBuildError(f"task {info.name!r}: the model factory returned {type(model).__name__}, not a torch.nn.Module")
    if check_output:
        check_model_output(model, info)
    return model


def _with_task_kwargs(factory: Any, kwargs: dict[str, Any], info: StructSummary, struct: Any) -> dict[str, Any]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return kwargs
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name, value in _task_kwargs(info, struct).items():
        if name in kwargs:
            continue
        if name in params or (accepts_any and name != "struct"):
            kwargs[name] = value
    return kwargs


def expected_output(info: StructSummary, batch: int) -> str:
    """Human-readable expected output layout of a model for the task type of ``info``."""
    return spec_of(info).describe_output(info.num_classes, info.image_size, batch)


def describe_shape(x: Any) -> str:
    """A model output's layout for error messages: tensor shapes, dict keys, sequence lengths.

    >>> describe_shape({"boxes": torch.zeros(2, 4), "n": [1, 2]})
    "{'boxes': (2, 4), 'n': list of 2}"
    """
    if isinstance(x, torch.Tensor):
        return str(tuple(x.shape))
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe_shape(v)}" for k, v in x.items()) + "}"
    if isinstance(x, list | tuple):
        return f"{type(x).__name__} of {len(x)}"
    return type(x).__name__


def output_fits(output: Any, info: StructSummary, batch: int) -> bool:
    """Whether ``output`` has the layout the task type of ``info`` expects for a batch of ``batch``."""
    return spec_of(info).fits_output(output, info.num_classes, info.image_size, batch)


def check_model_output(model: nn.Module, struct: Any, batch: int = 2) -> None:
    """Run ``model`` on a dummy batch and raise :class:`ModelBuildError` if the output misfits the task."""
    info = StructSummary.from_struct(struct)
    h, w = info.image_size
    # a fixed generator keeps the check independent of (and from disturbing) the global RNG state
    dummy = torch.rand(batch, info.channels, h, w, generator=torch.Generator().manual_seed(0))
    try:
        param = next(iter(model.parameters()))
        dummy = dummy.to(param.device)
    except StopIteration:
        pass
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(dummy)
    except Exception as err:
        raise ModelBuildError(
            f"task {info.name!r} ({info.task_type}): the model fails on a dummy batch of shape "
            f"{tuple(dummy.shape)}: {type(err).__name__}: {err}; expected {expected_output(info, batch)}"
        ) from None
    finally:
        model.train(was_training)
    if not output_fits(output, info, batch):
        raise ModelBuildError(
            f"task {info.name!r} ({info.task_type}): the model output {describe_shape(output)} does not fit the task type; "
            f"expected {expected_output(info, batch)}"
        )
