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
from pandemonium.models.detector import DETECTION_KEYS, CenterDetector
from pandemonium.models.heads import ClassificationHead, MultilabelHead, RegressionHead, SegmentationHead

CLASSIFICATION = "classification"
MULTILABEL = "multilabel_classification"
SEGMENTATION = "semantic_segmentation"
DETECTION = "detection"
REGRESSION = "regression"
TASK_TYPES = (CLASSIFICATION, MULTILABEL, SEGMENTATION, DETECTION, REGRESSION)

#: modalities each task type needs; used when the tasks layer's ``TaskType.requires()`` is unavailable
_REQUIRED_MODALITIES: dict[str, set[str]] = {
    CLASSIFICATION: {"image", "class"},
    MULTILABEL: {"image", "classes"},
    SEGMENTATION: {"image", "mask"},
    DETECTION: {"image", "boxes"},
    REGRESSION: {"image", "value"},
}

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


def required_modalities(struct: Any) -> set[str]:
    """Modalities the task type of ``struct`` requires (from ``TaskType.requires()`` when present)."""
    task_type = getattr(struct, "task_type", None)
    requires = getattr(task_type, "requires", None)
    if callable(requires):
        return {str(_value(m)) for m in requires()}
    return set(_REQUIRED_MODALITIES.get(str(_value(task_type)), {"image"}))


def check_task_modalities(struct: Any) -> None:
    """Raise :class:`ModelBuildError` if ``struct`` lacks a modality its task type needs."""
    info = StructSummary.from_struct(struct)
    if info.task_type not in TASK_TYPES:
        raise ModelBuildError(f"task {info.name!r}: unknown task type {info.task_type!r}; models exist for {list(TASK_TYPES)}")
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
    """Normalisation + backbone + the head of one task type (everything but detection).

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
    ) -> None:
        super().__init__()
        self.task_type = str(_value(task_type))
        self.normalize = Normalize(mean or [0.5] * in_channels, std or [0.25] * in_channels)
        self.backbone = SmallCNN(in_channels, preset=preset, width=width, depth=depth, blocks_per_stage=blocks_per_stage)
        channels = self.backbone.out_channels
        if self.task_type == CLASSIFICATION:
            self.head: nn.Module = ClassificationHead(channels, num_classes, dropout)
        elif self.task_type == MULTILABEL:
            self.head = MultilabelHead(channels, num_classes, dropout)
        elif self.task_type == SEGMENTATION:
            self.head = SegmentationHead(channels, num_classes, decoder_channels)
        elif self.task_type == REGRESSION:
            self.head = RegressionHead(channels, dropout)
        else:
            raise ModelBuildError(f"TaskModel: no head for task type {self.task_type!r} (detection uses CenterDetector)")

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
) -> nn.Module:
    """The built-in model for ``struct``: :class:`TaskModel` or, for detection, :class:`CenterDetector`.

    ``detection`` holds extra :class:`CenterDetector` kwargs (``stride``, ``head_channels``).
    """
    info = StructSummary.from_struct(struct)
    common = {"in_channels": info.channels, "mean": info.mean, "std": info.std, "preset": preset, "width": width, "depth": depth}
    if info.task_type == DETECTION:
        return CenterDetector(num_classes=info.num_classes, **common, **dict(detection or {}))
    return TaskModel(
        info.task_type,
        info.num_classes,
        blocks_per_stage=blocks_per_stage,
        dropout=dropout,
        decoder_channels=decoder_channels,
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
    h, w = info.image_size
    c = info.num_classes
    return {
        CLASSIFICATION: f"logits of shape (B, num_classes) = ({batch}, {c})",
        MULTILABEL: f"logits of shape (B, num_classes) = ({batch}, {c})",
        SEGMENTATION: f"logits of shape (B, num_classes, H, W) = ({batch}, {c}, {h}, {w})",
        REGRESSION: f"values of shape (B,) or (B, 1) = ({batch},)",
        DETECTION: (
            f'a dict {{"boxes": (B, N, 4), "objectness": (B, N), "class_scores": (B, N, {c})}} with B = {batch}'
        ),
    }[info.task_type]


def _shape(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return str(tuple(x.shape))
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {_shape(v)}" for k, v in x.items()) + "}"
    if isinstance(x, list | tuple):
        return f"{type(x).__name__} of {len(x)}"
    return type(x).__name__


def output_fits(output: Any, info: StructSummary, batch: int) -> bool:
    """Whether ``output`` has the layout the task type of ``info`` expects for a batch of ``batch``."""
    c = info.num_classes
    t = info.task_type
    if t == DETECTION:
        if not isinstance(output, Mapping) or any(k not in output for k in DETECTION_KEYS):
            return False
        boxes, obj, cls = (output[k] for k in DETECTION_KEYS)
        if not all(isinstance(v, torch.Tensor) for v in (boxes, obj, cls)):
            return False
        n = boxes.shape[1] if boxes.dim() == 3 else -1
        return (
            tuple(boxes.shape) == (batch, n, 4)
            and tuple(obj.shape) == (batch, n)
            and tuple(cls.shape) == (batch, n, c)
        )
    if not isinstance(output, torch.Tensor):
        return False
    if t in (CLASSIFICATION, MULTILABEL):
        return tuple(output.shape) == (batch, c)
    if t == SEGMENTATION:
        return tuple(output.shape) == (batch, c, *info.image_size)
    if t == REGRESSION:
        return tuple(output.shape) in ((batch,), (batch, 1))
    return False


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
            f"task {info.name!r} ({info.task_type}): the model output {_shape(output)} does not fit the task type; "
            f"expected {expected_output(info, batch)}"
        )
