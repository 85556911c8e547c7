"""Adapters that let a model written for other conventions speak pandemonium's.

pandemonium feeds every model RGB images in [0, 1] at the task's size and reads its output in the
layout of the task type (DEVELOPERS.md, "models"). A pretrained model usually wants something else
([-1, 1] or mean/std, BGR, a fixed size) and returns something else (probabilities, sigmoid maps,
YOLO-style ``[B, N, 5+C]`` rows, torchvision-style lists of dicts). :class:`AdaptedModel` wraps it
between an :class:`InputAdapter` and an :class:`OutputAdapter`, both small ``nn.Module`` s that keep the
whole chain differentiable where the user model is, so white-box attacks still work.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4), torch.nn.Softmax(-1))
>>> model = AdaptedModel(net, InputAdapter(size=(8, 8), value_range=(-1, 1), channels="bgr"),
...                      OutputAdapter("classification", kind="probabilities", num_classes=4))
>>> model(torch.rand(2, 3, 16, 16)).shape      # logits (log-probabilities) for images of any size
torch.Size([2, 4])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pandemonium.models.factory import ModelBuildError
from pandemonium.tasktypes import task_type_spec


class InputAdapter(nn.Module):
    """[0, 1] RGB images -> what the model wants.

    Args:
        size: ``(H, W)`` the model needs (``None``: any size); images are resized to it (``resize``:
            ``bilinear`` | ``nearest`` | ``area``).
        channels: ``rgb`` or ``bgr`` (the channel order the model was trained on).
        value_range: ``(lo, hi)`` the model's pixel range, e.g. ``(0, 255)`` or ``(-1, 1)``.
        mean, std: per-channel normalisation applied after scaling to ``value_range`` (in its units,
            in the model's channel order).
    """

    def __init__(self, size: Sequence[int] | None = None, channels: str = "rgb",
                 value_range: Sequence[float] = (0.0, 1.0), mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, resize: str = "bilinear") -> None:
        super().__init__()
        if channels not in ("rgb", "bgr"):
            raise ModelBuildError(f"input adapter: channels must be 'rgb' or 'bgr', got {channels!r}")
        if (mean is None) != (std is None):
            raise ModelBuildError("input adapter: give both mean and std, or neither")
        if resize not in ("bilinear", "nearest", "area"):
            raise ModelBuildError(f"input adapter: resize must be bilinear, nearest or area, got {resize!r}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.channels = channels
        self.resize = resize
        self.value_range = (float(value_range[0]), float(value_range[1]))
        self.register_buffer("mean", None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            extra = {"align_corners": False} if self.resize == "bilinear" else {}
            x = F.interpolate(x, size=self.size, mode=self.resize, **extra)
        if self.channels == "bgr" and x.shape[1] == 3:
            x = x.flip(1)
        lo, hi = self.value_range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


class OutputAdapter(nn.Module):
    """The model's raw output -> pandemonium's layout for ``task_type``.

    Kinds (``TaskTypeSpec.output_kinds``, converted by ``TaskTypeSpec.adapt_output``): classification ``logits`` | ``probabilities`` | ``log_probabilities``
    (probabilities become log-probabilities, which softmax maps back to them); multilabel ``logits`` |
    ``sigmoid``; segmentation ``logits`` | ``probabilities`` | ``sigmoid`` (maps are resized to the
    image; a single sigmoid channel becomes two classes: background, foreground); detection ``dense``
    (already pandemonium's dict), ``yolo`` (``[B, N, 5 + C]``: box, objectness, class probabilities;
    ``box_format`` ``cxcywh`` or ``xyxy`` in model-input pixels) or ``torchvision`` (a list of dicts
    ``boxes``/``scores``/``labels``, padded to ``max_detections``; ``label_offset=1`` when label 0 is
    the background). Boxes are scaled from the model's input size to the image's.
    """

    #: clamp margin before log / logit of probabilities
    eps = 1e-6

    def __init__(self, task_type: str, kind: str = "logits", num_classes: int = 0, box_format: str = "cxcywh",
                 label_offset: int = 0, max_detections: int = 100, model_size: Sequence[int] | None = None) -> None:
        super().__init__()
        task_type = str(getattr(task_type, "value", task_type))
        try:
            spec = task_type_spec(task_type)
        except LookupError:
            spec = None
        kinds = spec.output_kinds if spec is not None else ()
        if kind not in kinds or spec is None or spec.adapt_output is None:
            raise ModelBuildError(
                f"output adapter: kind {kind!r} does not fit a {task_type} model; choose one of {list(kinds)}"
            )
        if box_format not in ("cxcywh", "xyxy"):
            raise ModelBuildError(f"output adapter: box_format must be cxcywh or xyxy, got {box_format!r}")
        self.task_type, self.kind, self.num_classes = task_type, kind, int(num_classes)
        self.box_format, self.label_offset, self.max_detections = box_format, int(label_offset), int(max_detections)
        self.model_size = None if model_size is None else (int(model_size[0]), int(model_size[1]))

    def forward(self, y: Any, image_size: tuple[int, int]) -> Any:
        return task_type_spec(self.task_type).adapt_output(y, self, image_size)

    def tensor(self, y: Any) -> Tensor:
        """``y`` as one tensor (exported graphs often return a 1-tuple), or :class:`ModelBuildError`."""
        if isinstance(y, list | tuple) and len(y) == 1:
            y = y[0]
        if not isinstance(y, Tensor):
            raise ModelBuildError(f"output adapter: expected a tensor from the model, got {type(y).__name__}")
        return y

    def scale_boxes(self, boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
        """``xyxy`` boxes from the model's input size to the image's."""
        if self.model_size is None or self.model_size == tuple(image_size):
            return boxes
        sy, sx = image_size[0] / self.model_size[0], image_size[1] / self.model_size[1]
        return boxes * boxes.new_tensor([sx, sy, sx, sy])


class AdaptedModel(nn.Module):
    """``output_adapter(model(input_adapter(x)))``: a user model seen through pandemonium's conventions."""

    def __init__(self, model: nn.Module, input_adapter: InputAdapter | None = None,
                 output_adapter: OutputAdapter | None = None) -> None:
        super().__init__()
        self.model = model
        self.input_adapter = input_adapter or InputAdapter()
        self.output_adapter = output_adapter

    def forward(self, x: Tensor) -> Any:
        y = self.model(self.input_adapter(x))
        if self.output_adapter is None:
            return y
        return self.output_adapter(y, (int(x.shape[-2]), int(x.shape[-1])))


def build_adapters(task_type: str, num_classes: int, input_cfg: Mapping[str, Any] | None,
                   output_cfg: Mapping[str, Any] | None) -> tuple[InputAdapter, OutputAdapter]:
    """Adapters from the ``model.input`` / ``model.output`` config nodes (keys as the classes' args;
    ``range`` is accepted for ``value_range``)."""
    inp = dict(input_cfg or {})
    if "range" in inp:
        inp["value_range"] = inp.pop("range")
    inp = {k: v for k, v in inp.items() if v is not None}
    out = {k: v for k, v in dict(output_cfg or {}).items() if v is not None}
    try:
        input_adapter = InputAdapter(**inp)
        output_adapter = OutputAdapter(task_type, num_classes=num_classes, model_size=input_adapter.size, **out)
    except TypeError as err:
        raise ModelBuildError(f"model.input / model.output: {err}") from None
    return input_adapter, output_adapter
