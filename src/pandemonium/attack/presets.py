"""The attack presets as plain dicts: choosing a task's preset from the ``attack`` group and the helpers
that read it (patch shape, stages with the task's bank, success metric, target class).

:class:`~pandemonium.attack.spec.AttackSpec` is built from the dict :func:`select_preset` returns; this
module is the layer below it and knows nothing of the typed spec.

>>> with_target_class({"_target_": "ClassificationLoss", "target_class": None}, 3)
{'_target_': 'ClassificationLoss', 'target_class': 3}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pandemonium.attack.splits import FIT_SPLIT, REPORT_SPLIT
from pandemonium.errors import ConfigError
from pandemonium.plain import to_plain

__all__ = ["DEFAULTS", "OVERRIDE_KEYS", "SCALED_IMPLANTERS", "AttackConfigError", "patch_shape_for", "select_preset",
           "stage_configs", "success_metric", "with_patch_target", "with_target_class"]

#: keys of the ``attack`` group that override the chosen preset when not null
OVERRIDE_KEYS = ("steps", "batch_size", "lr", "patch_fraction", "num_eval", "method", "blackbox")

#: implanters whose ``scale`` multiplies the patch's pixel size
SCALED_IMPLANTERS = ("RectangleImplanter", "FusedImplantAugment")

#: the one default of every setting a preset may leave out
DEFAULTS: dict[str, Any] = {
    "batch_size": 16, "eval_every": 50, "num_eval": 128, "eval_batch_size": 64,
    "optimizer": {"name": "adam", "lr": 0.03}, "schedule": {"name": "none"},
    "patch_fraction": 0.09, "patch_init": "uniform",
    "parameterisation": {"_target_": "pandemonium.attack.patches.RawPatch"},
    "curve_pairs": "diagonal",
}


class AttackConfigError(ConfigError):
    """The attack configuration does not fit a task (preset, patch size, reuse, missing model)."""


# ------------------------------------------------------------------------------- preset dicts
def select_preset(attack_cfg: Mapping[str, Any], task_name: str, task_type: str) -> dict[str, Any]:
    """The attack preset for one task as a plain dict, with the group's overrides applied.

    ``attack_cfg`` is either the default group (``presets: {task_type: preset}``) or one preset.
    Raises :class:`AttackConfigError` naming the task, its type and the preset when they do not fit.
    """
    cfg = to_plain(attack_cfg) or {}
    if not cfg:
        raise AttackConfigError("no attack configuration: the `attack` config group is empty (use attack=default)")
    if "presets" in cfg:
        presets = dict(cfg.get("presets") or {})
        if task_type not in presets:  # a task type a plugin added: its spec names its default preset
            presets.update(_spec_default_preset(task_type))
        if task_type not in presets:
            raise AttackConfigError(
                f"task {task_name!r} is a {task_type} task, but the attack config has no preset for that "
                f"type (presets for: {', '.join(sorted(presets)) or 'none'}); pick one with attack=<preset>"
            )
        preset = dict(presets[task_type])
    else:
        preset = {k: v for k, v in cfg.items() if k not in OVERRIDE_KEYS}
    # the group's overrides, or a single preset's own values for these keys
    preset.update({k: cfg[k] for k in OVERRIDE_KEYS if cfg.get(k) is not None})
    name = preset.get("name", "<unnamed preset>")
    fits = [str(t) for t in preset.get("task_types") or []]
    if fits and task_type not in fits:
        raise AttackConfigError(
            f"attack preset {name!r} is for {', '.join(fits)} tasks, but task {task_name!r} is a "
            f"{task_type} task; use attack=default (preset by task type) or a preset for {task_type}"
        )
    if preset.get("target_class") is not None:
        preset["loss"] = with_target_class(preset.get("loss"), int(preset["target_class"]), only_unset=True)
    _check_loss_fits(preset, task_name, task_type)
    if preset.get("patch_fraction") is not None:
        preset["patch"] = {**(preset.get("patch") or {}), "fraction": float(preset["patch_fraction"]), "size": None}
    if preset.get("lr") is not None:
        preset["optimizer"] = {**(preset.get("optimizer") or {}), "lr": float(preset["lr"])}
    missing = [k for k in ("stages", "loss", "weights", "steps") if not preset.get(k)]
    if missing:
        raise AttackConfigError(f"attack preset {name!r} (task {task_name!r}) lacks {', '.join(missing)}")
    return preset


def with_target_class(spec: Any, target_class: int, only_unset: bool = False) -> Any:
    """A loss spec with its ``target_class`` entries set (only the ``null`` ones with ``only_unset``)."""
    if isinstance(spec, Mapping):
        return {k: (target_class if k == "target_class" and (v is None or not only_unset)
                    else with_target_class(v, target_class, only_unset)) for k, v in spec.items()}
    if isinstance(spec, list):
        return [with_target_class(v, target_class, only_unset) for v in spec]
    return spec


def with_patch_target(preset: Mapping[str, Any], patch_payload: Mapping[str, Any], task_name: str) -> dict[str, Any]:
    """The preset a stored patch is evaluated with on ``task_name``: the configured one, but aiming at
    the target class the patch was fitted for on that task (a patch is judged by its own goal)."""
    stored = (patch_payload.get("presets") or {}).get(task_name) or {}
    preset = dict(preset)
    if stored.get("target_class") is not None and preset.get("target_class") is not None:
        preset["target_class"] = int(stored["target_class"])
        preset["loss"] = with_target_class(preset.get("loss"), preset["target_class"])
    return preset


def _loss_targets(spec: Any) -> list[str]:
    if isinstance(spec, Mapping):
        found = [str(spec["_target_"]).rsplit(".", 1)[-1]] if "_target_" in spec else []
        return found + [t for v in spec.values() for t in _loss_targets(v)]
    if isinstance(spec, list):
        return [t for v in spec for t in _loss_targets(v)]
    return []


def _spec_default_preset(task_type: str) -> dict[str, Any]:
    """``{task_type: preset}`` from ``configs/attack/<TaskTypeSpec.attack_preset>.yaml`` (any config folder,
    plugins' included); empty when the type names no preset."""
    from pandemonium.plugins import load_group_config
    from pandemonium.tasktypes import task_type_spec

    try:
        name = task_type_spec(task_type).attack_preset
    except LookupError:
        return {}
    return {task_type: load_group_config("attack", name)} if name else {}


def _check_loss_fits(preset: Mapping[str, Any], task_name: str, task_type: str) -> None:
    """A loss that a task-type spec claims for other task types (a detection loss on a classifier)
    is refused up front; losses no spec claims are left to the loss contract check."""
    from pandemonium.tasktypes import registered_task_types

    for loss in _loss_targets(preset.get("loss")):
        fits = [spec.name for spec in registered_task_types() if loss in spec.attack_losses]
        if fits and task_type not in fits:
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
        fraction = float(patch.get("fraction", DEFAULTS["patch_fraction"]))
        if not 0 < fraction <= 1:
            raise AttackConfigError(f"attack preset {preset.get('name')!r}: patch fraction {fraction} must be in (0, 1]")
        h = w = max(1, int(math.floor(math.sqrt(fraction * height * width))))
    max_scale = _max_scale(preset.get("stages") or [])
    if h <= 0 or w <= 0 or h * max_scale > height or w * max_scale > width:
        raise AttackConfigError(
            f"patch of {h}x{w} px (at implant scale up to {max_scale:g}) is larger than the "
            f"{height}x{width} images of task {task_name!r}; lower attack patch.size / patch.fraction"
        )
    return int(channels), h, w


def _max_scale(stages: Sequence[Mapping[str, Any]]) -> float:
    """The largest pixel scale a rectangle implanter applies (1 for other implanters)."""
    for stage in stages:
        if str(stage.get("_target_", "")).rsplit(".", 1)[-1] in SCALED_IMPLANTERS:
            scale = stage.get("scale", 1.0)
            return float(max(scale)) if isinstance(scale, (list, tuple)) else float(scale)
    return 1.0


def stage_configs(preset: Mapping[str, Any], struct: Any, data_dir: str, fold: int = 0,
                  eval_split: str = REPORT_SPLIT) -> list[dict[str, Any]]:
    """The preset's stages with ``bank: null`` filled with the task's own images: the train split to
    fit, ``eval_split`` to evaluate (``val`` while fitting, to select the best patch; the held-out
    ``test`` split for reported figures; see :mod:`pandemonium.attack.splits`)."""
    bank = {"task": struct.name, "data_dir": str(data_dir), "train_split": FIT_SPLIT, "eval_split": str(eval_split),
            "fold": int(fold)}
    return [{**stage, "bank": dict(bank)} if stage.get("bank", "") in (None, "task") else dict(stage)
            for stage in preset["stages"]]


def success_metric(preset: Mapping[str, Any], task_type: str) -> str:
    """The evaluation column that measures this preset's attack success: the preset's
    ``success_metric``, else the headline metric of the task type's spec."""
    from pandemonium.tasktypes import TaskTypeFeatureError, UnknownTaskTypeError, task_type_spec

    if preset.get("success_metric"):
        return str(preset["success_metric"])
    target = preset.get("target_class")
    try:
        return task_type_spec(task_type).headline_metric(None if target is None else int(target))
    except (TaskTypeFeatureError, UnknownTaskTypeError):
        raise AttackConfigError(
            f"attack preset {preset.get('name')!r}: no success metric known for {task_type} tasks; "
            "set success_metric in the preset"
        ) from None
