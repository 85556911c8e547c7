"""Attack presets (``configs/attack``): choosing one per task, checking it fits, building its parts."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig

from pandemonium.errors import ConfigError
from pandemonium.plain import to_plain

log = logging.getLogger(__name__)


#: keys of the ``attack`` group that override the chosen preset when not null
OVERRIDE_KEYS = ("steps", "batch_size", "lr", "patch_fraction", "num_eval")


#: implanters whose ``scale`` multiplies the patch's pixel size
SCALED_IMPLANTERS = ("RectangleImplanter", "FusedImplantAugment")


class AttackConfigError(ConfigError):
    """The attack configuration does not fit a task (preset, patch size, reuse, missing model)."""




def select_preset(attack_cfg: Mapping[str, Any] | DictConfig, task_name: str, task_type: str) -> dict[str, Any]:
    """The attack preset for one task as a plain dict, with the group's overrides applied.

    ``attack_cfg`` is either the default group (``presets: {task_type: preset}``) or one preset.
    Raises :class:`AttackConfigError` naming the task, its type and the preset when they do not fit.
    """
    cfg = to_plain(attack_cfg) or {}
    if not cfg:
        raise AttackConfigError("no attack configuration: the `attack` config group is empty (use attack=default)")
    if "presets" in cfg:
        presets = cfg.get("presets") or {}
        if task_type not in presets:
            raise AttackConfigError(
                f"task {task_name!r} is a {task_type} task, but the attack config has no preset for that "
                f"type (presets for: {', '.join(sorted(presets)) or 'none'}); pick one with attack=<preset>"
            )
        preset = dict(presets[task_type])
    else:
        preset = {k: v for k, v in cfg.items() if k not in OVERRIDE_KEYS}
        for key in OVERRIDE_KEYS:  # a single preset keeps its own values for these keys
            if key in cfg and cfg[key] is not None:
                preset[key] = cfg[key]
    name = preset.get("name", "<unnamed preset>")
    fits = [str(t) for t in preset.get("task_types") or []]
    if fits and task_type not in fits:
        raise AttackConfigError(
            f"attack preset {name!r} is for {', '.join(fits)} tasks, but task {task_name!r} is a "
            f"{task_type} task; use attack=default (preset by task type) or a preset for {task_type}"
        )
    for key in OVERRIDE_KEYS:
        if "presets" in cfg and cfg.get(key) is not None:
            preset[key] = cfg[key]
    if preset.get("target_class") is not None:
        preset["loss"] = _fill_target_class(preset.get("loss"), int(preset["target_class"]))
    _check_loss_fits(preset, task_name, task_type)
    if preset.get("patch_fraction") is not None:
        preset.setdefault("patch", {})
        preset["patch"] = {**preset["patch"], "fraction": float(preset["patch_fraction"]), "size": None}
    if preset.get("lr") is not None:
        preset["optimizer"] = {**(preset.get("optimizer") or {}), "lr": float(preset["lr"])}
    missing = [k for k in ("stages", "loss", "weights", "steps") if not preset.get(k)]
    if missing:
        raise AttackConfigError(f"attack preset {name!r} (task {task_name!r}) lacks {', '.join(missing)}")
    return preset


#: built-in loss classes -> the task types whose model outputs they consume
LOSS_TASK_TYPES = {
    "ClassificationTargeted": ("classification",),
    "ClassificationUntargeted": ("classification",),
    "DetectionDisappearance": ("detection",),
    "DetectionClassFlip": ("detection",),
    "SegmentationPixelFlip": ("semantic_segmentation",),
}


def _fill_target_class(spec: Any, target_class: int) -> Any:
    """Set ``target_class: null`` entries of a loss spec to the preset's ``target_class``."""
    if isinstance(spec, Mapping):
        return {k: (target_class if k == "target_class" and v is None else _fill_target_class(v, target_class))
                for k, v in spec.items()}
    if isinstance(spec, list):
        return [_fill_target_class(v, target_class) for v in spec]
    return spec


def _set_target_class(spec: Any, target_class: int) -> Any:
    """Every ``target_class`` entry of a loss spec set to ``target_class``."""
    if isinstance(spec, Mapping):
        return {k: (target_class if k == "target_class" else _set_target_class(v, target_class)) for k, v in spec.items()}
    if isinstance(spec, list):
        return [_set_target_class(v, target_class) for v in spec]
    return spec


def with_patch_target(preset: Mapping[str, Any], patch_payload: Mapping[str, Any], task_name: str) -> dict[str, Any]:
    """The preset a stored patch is evaluated with on ``task_name``: the configured one, but aiming at
    the target class the patch was fitted for on that task (a patch is judged by its own goal)."""
    stored = (patch_payload.get("presets") or {}).get(task_name) or {}
    preset = dict(preset)
    if stored.get("target_class") is not None and preset.get("target_class") is not None:
        target = int(stored["target_class"])
        preset["target_class"] = target
        preset["loss"] = _set_target_class(preset.get("loss"), target)
    return preset


def _loss_targets(spec: Any) -> list[str]:
    if isinstance(spec, Mapping):
        found = [str(spec["_target_"]).rsplit(".", 1)[-1]] if "_target_" in spec else []
        return found + [t for v in spec.values() for t in _loss_targets(v)]
    if isinstance(spec, list):
        return [t for v in spec for t in _loss_targets(v)]
    return []


def _check_loss_fits(preset: Mapping[str, Any], task_name: str, task_type: str) -> None:
    """A built-in loss for another task type (a detection loss on a classifier) is refused up front."""
    for loss in _loss_targets(preset.get("loss")):
        fits = LOSS_TASK_TYPES.get(loss)
        if fits is not None and task_type not in fits:
            raise AttackConfigError(
                f"attack preset {preset.get('name')!r}: loss {loss} is for {', '.join(fits)} models, but task "
                f"{task_name!r} is a {task_type} task"
            )


def patch_shape_for(preset: Mapping[str, Any], image_size: Sequence[int], channels: int,
                    task_name: str) -> tuple[int, int, int]:
    """``(C, h, w)`` of the patch: ``patch.size`` in pixels, or a square of ``patch.fraction`` of the
    image area. Refuses patches larger than the images (before any work)."""
    patch = preset.get("patch") or {}
    height, width = int(image_size[0]), int(image_size[1])
    if patch.get("size") is not None:
        size = patch["size"]
        h, w = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
    else:
        fraction = float(patch.get("fraction", 0.09))
        if not 0 < fraction <= 1:
            raise AttackConfigError(f"attack preset {preset.get('name')!r}: patch fraction {fraction} must be in (0, 1]")
        side = int(math.floor(math.sqrt(fraction * height * width)))
        h = w = max(1, side)
    max_scale = _max_scale(preset)
    if h <= 0 or w <= 0 or h * max_scale > height or w * max_scale > width:
        raise AttackConfigError(
            f"patch of {h}x{w} px (at implant scale up to {max_scale:g}) is larger than the "
            f"{height}x{width} images of task {task_name!r}; lower attack patch.size / patch.fraction"
        )
    return int(channels), h, w


def _max_scale(preset: Mapping[str, Any]) -> float:
    """The largest pixel scale a rectangle implanter of the preset applies (1 for other implanters)."""
    for stage in preset.get("stages") or []:
        if str(stage.get("_target_", "")).rsplit(".", 1)[-1] in SCALED_IMPLANTERS:
            scale = stage.get("scale", 1.0)
            return float(max(scale)) if isinstance(scale, (list, tuple)) else float(scale)
    return 1.0


def task_bank_spec(struct: Any, data_dir: str, fold: int = 0) -> dict[str, Any]:
    """Image bank of a task for implanters: train split to fit, the held-out test split to evaluate."""
    return {"task": struct.name, "data_dir": str(data_dir), "train_split": "train", "eval_split": "test",
            "fold": int(fold)}


def stage_configs(preset: Mapping[str, Any], struct: Any, data_dir: str, fold: int = 0) -> list[dict[str, Any]]:
    """The preset's stages with ``bank: null`` filled with the task's own images."""
    out = []
    for stage in preset["stages"]:
        stage = dict(stage)
        if "bank" in stage and stage["bank"] in (None, "task"):
            stage["bank"] = task_bank_spec(struct, data_dir, fold)
        out.append(stage)
    return out


#: the headline metric of each task type (column of the fixed-evaluation table)
DEFAULT_SUCCESS_METRIC = {
    "classification": "untargeted_success",
    "detection": "disappearance",
    "semantic_segmentation": "pixel_flip",
}


def success_metric(preset: Mapping[str, Any], task_type: str) -> str:
    """The evaluation column that measures this preset's attack success."""
    if preset.get("success_metric"):
        return str(preset["success_metric"])
    if task_type == "classification" and preset.get("target_class") is not None:
        return "targeted_success"
    if task_type not in DEFAULT_SUCCESS_METRIC:
        raise AttackConfigError(
            f"attack preset {preset.get('name')!r}: no success metric known for {task_type} tasks; "
            "set success_metric in the preset"
        )
    return DEFAULT_SUCCESS_METRIC[task_type]


def build_loss(preset: Mapping[str, Any], task_name: str) -> Any:
    """Instantiate the preset's loss (``_target_`` + kwargs) with Hydra."""
    from hydra.utils import instantiate

    spec = dict(preset["loss"])
    try:
        return instantiate(spec, _convert_="all")
    except Exception as err:  # hydra wraps import and constructor errors alike
        cause = err.__cause__ or err
        raise AttackConfigError(
            f"attack preset {preset.get('name')!r} (task {task_name!r}): cannot build loss "
            f"{spec.get('_target_')!r}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}"
        ) from None


def build_task_pipeline(preset: Mapping[str, Any], struct: Any, model: Any, data_dir: str, seed: int,
                        fold: int = 0, eval_stages: Sequence[Mapping[str, Any]] | None = None) -> Any:
    """The preset's stages (bank = the task's images) followed by the task's model, as a Pipeline."""
    from pandemonium.attack.pipeline import Pipeline
    from pandemonium.attack.stages.base import StageError

    stages = list(eval_stages) if eval_stages is not None else stage_configs(preset, struct, data_dir, fold)
    config = {"seed": int(seed), "stages": [*stages, {"_target_": "ModelStage", "model": "???"}]}
    try:
        return Pipeline.from_config(config, model=model)
    except (StageError, ValueError) as err:
        raise AttackConfigError(
            f"attack preset {preset.get('name')!r} (task {struct.name!r}): the pipeline does not build: {err}"
        ) from None


def build_patch(preset: Mapping[str, Any], shape: tuple[int, int, int], seed: int) -> Any:
    """The trainable patch parameterisation named by ``patch.parameterisation`` (default: raw pixels)."""
    from hydra.utils import get_class

    spec = dict((preset.get("patch") or {}).get("parameterisation") or {"_target_": "pandemonium.attack.patches.RawPatch"})
    target = spec.pop("_target_", "pandemonium.attack.patches.RawPatch")
    init = (preset.get("patch") or {}).get("init", "uniform")
    try:
        return get_class(target)(shape=list(shape), init=init, seed=int(seed), **spec)
    except Exception as err:
        raise AttackConfigError(
            f"attack preset {preset.get('name')!r}: patch parameterisation {target!r} does not build: {err}"
        ) from None
