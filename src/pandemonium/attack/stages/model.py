"""The model stage: frozen victim model(s), ensembles, a separate eval model, detector adapters.

``ModelStage(model)`` accepts

* an ``nn.Module`` (in-memory: its config is the placeholder ``"???"``, see :mod:`.pipeline`),
* ``{"_target_": "pkg.make_model", **kwargs}`` -- a model factory, instantiated with Hydra,
* ``{"torchscript": "path/to/model.pt"}`` -- a TorchScript file,
* a list or dict of the above: an ensemble. A list's outputs are averaged by default
  (``reduce="mean"``: logits / probabilities of the same shape); a dict's outputs are returned as
  ``{model_name: output}`` (``reduce="none"``); detector outputs of several models can be
  concatenated along the detection axis (``reduce="concat"``) so a disappearance loss sees all.

``eval_model`` (same forms) is used instead when ``evaluate=True`` -- a transfer test: optimise
against one model, evaluate against another. Weights are frozen (``requires_grad=False``) and the
models stay in eval mode even when the pipeline is put in train mode; gradients still flow to the
input (the patch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from pandemonium.attack.stages.base import Batch, PipelineBase, StageError
from pandemonium.attack.stages.registry import register_stage, target_of

__all__ = ["DetectorOutputAdapter", "ModelStage"]

MISSING = "???"
_REDUCTIONS = ("mean", "concat", "none")


class DetectorOutputAdapter:
    """Normalise a detector's output to ``{"boxes": (B,N,4) xyxy px, "objectness": (B,N),
    "class_scores": (B,N,C)}`` (DEVELOPERS.md).

    ``layout``: ``"dict"`` (keys named by ``boxes_key`` / ``objectness_key`` / ``class_scores_key``),
    ``"tuple"`` (``(boxes, objectness, class_scores)``) or ``"yolo"`` (one tensor ``(B, N, 5 + C)``:
    4 box values, objectness, class values). ``box_format``: ``"xyxy"``, ``"xywh"`` (corner + size) or
    ``"cxcywh"``. ``scores_are_logits`` / ``objectness_is_logits`` apply softmax / sigmoid. Without
    objectness (``objectness_key=None`` in dict layout) the objectness is the max class score.

    >>> adapter = DetectorOutputAdapter(layout="yolo", box_format="cxcywh", scores_are_logits=True)
    """

    def __init__(
        self,
        layout: str = "dict",
        boxes_key: str = "boxes",
        objectness_key: str | None = "objectness",
        class_scores_key: str = "class_scores",
        box_format: str = "xyxy",
        scores_are_logits: bool = False,
        objectness_is_logits: bool = False,
    ) -> None:
        if layout not in ("dict", "tuple", "yolo"):
            raise StageError(f"DetectorOutputAdapter: layout must be dict/tuple/yolo, got {layout!r}")
        if box_format not in ("xyxy", "xywh", "cxcywh"):
            raise StageError(
                f"DetectorOutputAdapter: box_format must be xyxy/xywh/cxcywh, got {box_format!r}"
            )
        self.layout = layout
        self.boxes_key = boxes_key
        self.objectness_key = objectness_key
        self.class_scores_key = class_scores_key
        self.box_format = box_format
        self.scores_are_logits = scores_are_logits
        self.objectness_is_logits = objectness_is_logits

    def __call__(self, output: Any) -> dict[str, Tensor]:
        objectness: Tensor | None
        if self.layout == "yolo":
            if not isinstance(output, Tensor) or output.dim() != 3 or output.shape[-1] < 6:
                raise StageError(
                    "DetectorOutputAdapter(layout='yolo'): expected a (B, N, 5 + C) tensor, got "
                    f"{type(output).__name__} {tuple(getattr(output, 'shape', ()))}"
                )
            boxes, objectness, scores = output[..., :4], output[..., 4], output[..., 5:]
        elif self.layout == "tuple":
            if not isinstance(output, (tuple, list)) or len(output) != 3:
                raise StageError(
                    "DetectorOutputAdapter(layout='tuple'): expected (boxes, objectness, class_scores)"
                )
            boxes, objectness, scores = output
        else:
            if not isinstance(output, Mapping):
                raise StageError(
                    f"DetectorOutputAdapter(layout='dict'): expected a dict, got {type(output).__name__}"
                )
            needed = [self.boxes_key, self.class_scores_key] + (
                [self.objectness_key] if self.objectness_key else []
            )
            missing = [k for k in needed if k not in output]
            if missing:
                raise StageError(
                    f"DetectorOutputAdapter: detector output lacks keys {missing}; it has {sorted(output)}"
                )
            boxes, scores = output[self.boxes_key], output[self.class_scores_key]
            objectness = output[self.objectness_key] if self.objectness_key else None
        if self.scores_are_logits:
            scores = scores.softmax(dim=-1)
        if objectness is None:
            objectness = scores.max(dim=-1).values
        elif self.objectness_is_logits:
            objectness = objectness.sigmoid()
        return {"boxes": self._to_xyxy(boxes), "objectness": objectness, "class_scores": scores}

    def _to_xyxy(self, boxes: Tensor) -> Tensor:
        if self.box_format == "xyxy":
            return boxes
        a, b, c, d = boxes.unbind(-1)
        if self.box_format == "xywh":
            return torch.stack([a, b, a + c, b + d], dim=-1)
        return torch.stack([a - c / 2, b - d / 2, a + c / 2, b + d / 2], dim=-1)


def _build_one(spec: Any, role: str) -> tuple[nn.Module, Any]:
    """Model and its serialisable spec (``"???"`` for an in-memory module)."""
    if isinstance(spec, nn.Module):
        return spec, MISSING
    if isinstance(spec, str):
        if spec == MISSING:
            raise StageError(
                f"ModelStage: {role} is the placeholder {MISSING!r} (an in-memory model that was not "
                f"serialised); pass it explicitly, e.g. Pipeline.from_config(cfg, {role.split('[')[0]}=my_model)"
            )
        raise StageError(
            f"ModelStage: {role} = {spec!r}; expected an nn.Module, {{'_target_': ...}} or {{'torchscript': path}}"
        )
    if isinstance(spec, Mapping) and "torchscript" in spec:
        path = str(spec["torchscript"])
        try:
            model = torch.jit.load(path, map_location="cpu")
        except Exception as err:
            raise StageError(f"ModelStage: cannot load TorchScript {role} from {path!r}: {err}") from err
        return model, {"torchscript": path}
    if isinstance(spec, Mapping) and "_target_" in spec:
        plain = dict(spec)
        try:
            model = instantiate(plain, _convert_="all")
        except Exception as err:
            raise StageError(
                f"ModelStage: cannot instantiate {role} from {plain.get('_target_')!r}: {err}"
            ) from err
        if not isinstance(model, nn.Module):
            raise StageError(
                f"ModelStage: {role} factory {plain['_target_']!r} returned {type(model).__name__}, not an nn.Module"
            )
        return model, plain
    raise StageError(
        f"ModelStage: {role} of type {type(spec).__name__} is not a model, list/dict of models or model config"
    )


def _build_models(spec: Any, role: str) -> tuple[nn.ModuleDict, Any, str]:
    """``(ModuleDict, spec, kind)`` with kind ``single`` / ``list`` / ``dict``."""
    is_config = isinstance(spec, Mapping) and ("_target_" in spec or "torchscript" in spec)
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        if not spec:
            raise StageError(f"ModelStage: {role} is an empty list")
        pairs = [_build_one(item, f"{role}[{i}]") for i, item in enumerate(spec)]
        return nn.ModuleDict({str(i): m for i, (m, _) in enumerate(pairs)}), [s for _, s in pairs], "list"
    if isinstance(spec, Mapping) and not is_config and not isinstance(spec, nn.Module):
        if not spec:
            raise StageError(f"ModelStage: {role} is an empty dict")
        bad = [k for k in spec if not isinstance(k, str) or "." in k or not k]
        if bad:
            raise StageError(f"ModelStage: ensemble names {bad} must be non-empty str without '.'")
        pairs = {k: _build_one(v, f"{role}[{k!r}]") for k, v in spec.items()}
        return (
            nn.ModuleDict({k: m for k, (m, _) in pairs.items()}),
            {k: s for k, (_, s) in pairs.items()},
            "dict",
        )
    model, model_spec = _build_one(spec, role)
    return nn.ModuleDict({"0": model}), model_spec, "single"


@register_stage
class ModelStage(PipelineBase):
    """Runs the frozen victim model(s) on the implanted images (see the module docstring).

    >>> stage = ModelStage(my_model, eval_model=other_model)            # doctest: +SKIP
    >>> ModelStage([model_a, model_b])                                   # mean of the outputs
    >>> ModelStage({"a": model_a, "b": model_b})                         # {"a": out_a, "b": out_b}
    >>> ModelStage(detector, adapter={"layout": "yolo", "box_format": "cxcywh"})
    """

    name = "ModelStage"
    role = "model"

    def __init__(
        self,
        model: Any,
        eval_model: Any = None,
        reduce: str | None = None,
        adapter: Mapping[str, Any] | str | None = None,
        keys: Sequence[str] | str | None = None,
    ) -> None:
        super().__init__(keys=keys)
        self.models, model_spec, self.kind = _build_models(model, "model")
        self.eval_models: nn.ModuleDict | None = None
        eval_spec = None
        if eval_model is not None:
            self.eval_models, eval_spec, self.eval_kind = _build_models(eval_model, "eval_model")
        if reduce is None:
            reduce = "none" if self.kind == "dict" else "mean"
        if reduce not in _REDUCTIONS:
            raise StageError(f"stage 'ModelStage': reduce must be one of {_REDUCTIONS}, got {reduce!r}")
        self.reduce = reduce
        if isinstance(adapter, str):
            adapter = {"layout": adapter}
        self.adapter = DetectorOutputAdapter(**adapter) if adapter is not None else None
        self._freeze()
        self.params = {
            "model": model_spec,
            "eval_model": eval_spec,
            "reduce": reduce,
            "adapter": dict(adapter) if adapter is not None else None,
            "keys": self.keys,
        }

    def _freeze(self) -> None:
        for module in [self.models, self.eval_models]:
            if module is not None:
                module.requires_grad_(False)
                module.eval()

    def train(self, mode: bool = True) -> ModelStage:
        """Train mode for the stage, but the victim models stay in eval mode (frozen BN / dropout)."""
        super().train(mode)
        self._freeze()
        return self

    @property
    def in_memory(self) -> bool:
        """Whether a model was given as an ``nn.Module`` (so :meth:`to_config` has a placeholder)."""
        return MISSING in str(self.params["model"]) or MISSING in str(self.params["eval_model"])

    def apply(
        self, x: Batch, params: dict[str, Tensor], control: bool = False, evaluate: bool = False, **kwargs
    ):
        use_eval = evaluate and self.eval_models is not None
        models = self.eval_models if use_eval else self.models
        kind = self.eval_kind if use_eval else self.kind
        outputs = {}
        for key, model in models.items():
            out = model(x)
            outputs[key] = self.adapter(out) if self.adapter is not None else out
        if kind == "single":
            return outputs["0"]
        return self._reduce(outputs, kind)

    def _reduce(self, outputs: dict[str, Any], kind: str) -> Any:
        if self.reduce == "none":
            return list(outputs.values()) if kind == "list" else outputs
        values = list(outputs.values())
        if self.reduce == "concat":
            if not all(isinstance(v, Mapping) for v in values):
                raise StageError(
                    "stage 'ModelStage': reduce='concat' needs detector dict outputs (use an adapter)"
                )
            return {k: torch.cat([v[k] for v in values], dim=1) for k in values[0]}
        if not all(isinstance(v, Tensor) for v in values):
            raise StageError(
                "stage 'ModelStage': reduce='mean' averages tensor outputs; these models return "
                f"{[type(v).__name__ for v in values]} (detectors: use reduce='concat' or 'none')"
            )
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) != 1:
            raise StageError(f"stage 'ModelStage': cannot average outputs of shapes {sorted(shapes)}")
        return torch.stack(values, dim=0).mean(dim=0)

    def get_description(self) -> str:
        names = ", ".join(f"{k}: {type(m).__name__}" for k, m in self.models.items())
        text = f"**{self.name}**: victim model(s) {names} (frozen, eval mode), reduce={self.reduce}"
        if self.eval_models is not None:
            eval_names = ", ".join(type(m).__name__ for m in self.eval_models.values())
            text += f"; evaluation (transfer) model(s): {eval_names}"
        return text

    def to_config(self) -> dict[str, Any]:
        """``_target_`` + params; in-memory models appear as ``"???"`` (fill via ``from_config``)."""
        return {"_target_": target_of(type(self)), **self.params}

    @classmethod
    def from_config(cls, kwargs: Mapping[str, Any], model: Any = None, eval_model: Any = None) -> ModelStage:
        """Build from config kwargs; ``model`` / ``eval_model`` replace (placeholder) specs."""
        kwargs = dict(kwargs)
        if model is not None:
            kwargs["model"] = model
        if eval_model is not None:
            kwargs["eval_model"] = eval_model
        if "model" not in kwargs:
            raise StageError("stage 'ModelStage': config has no 'model' (pass from_config(cfg, model=...))")
        return cls(**kwargs)
