"""The ``attack`` mode: per task, fit a patch against the task's model, evaluate it, store it.

Subroutines (``mode.subroutines``):

``train``
    Train a model for each task that has none (stored in this run, found in this project, or
    attached by ``reuse.models=<project>``), with the ``train`` mode's code.
``attack``
    Build the pipeline from the task's attack preset (``configs/attack``), fit the patch with
    :class:`~pandemonium.pipeline.trainer.PatchTrainer`, store the patch, its checkpoint, the
    pipeline YAML and the training curves. ``mode.universal=true`` fits ONE patch against every
    task of ``task_list`` at once (the losses of all tasks are summed).
``evaluate``
    Fixed-condition evaluation of the task's patch (patched vs control, same sampled conditions):
    eval table, summary with confidence intervals, before/after examples for the report. Runs alone
    on patches of an earlier project with ``mode.subroutines=[evaluate] reuse.patches=<project>``.

Everything a step produces goes through ``self.fm.construct_saving_path`` and into ``struct.paths``,
so ``continue=latest`` after an interruption skips finished tasks. MLflow: one parent run per
invocation, one child run per task and step, tagged with task, model and patch ids.

Bad input is refused before any work starts (:meth:`AttackScheduler.preflight`): a preset that does
not fit a task's type, a patch larger than the images, a ``reuse`` that finds nothing, a task with
no model when ``train`` is off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from pandemonium.schedulers.base import AbstractBaseScheduler
from pandemonium.schedulers.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "AttackConfigError",
    "AttackScheduler",
    "OVERRIDE_KEYS",
    "artifact_id",
    "patch_shape_for",
    "select_preset",
]

#: keys of the ``attack`` group that override the chosen preset when not null
OVERRIDE_KEYS = ("steps", "batch_size", "lr", "patch_fraction", "num_eval")
#: struct.paths keys this mode writes besides the FileManager's registered ones
CURVES_KEY = "curves"
EXAMPLES_KEY = "examples"
EVAL_SUMMARY_KEY = "eval_summaries"
UNIVERSAL_TASK = "universal"
#: implanters whose ``scale`` multiplies the patch's pixel size
SCALED_IMPLANTERS = ("RectangleImplanter", "FusedImplantAugment")


class AttackConfigError(ConfigError):
    """The attack configuration does not fit a task (preset, patch size, reuse, missing model)."""


# ------------------------------------------------------------------------------------------ presets
def _plain(cfg: Any) -> Any:
    if isinstance(cfg, DictConfig) or OmegaConf.is_list(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def select_preset(attack_cfg: Mapping[str, Any] | DictConfig, task_name: str, task_type: str) -> dict[str, Any]:
    """The attack preset for one task as a plain dict, with the group's overrides applied.

    ``attack_cfg`` is either the default group (``presets: {task_type: preset}``) or one preset.
    Raises :class:`AttackConfigError` naming the task, its type and the preset when they do not fit.
    """
    cfg = _plain(attack_cfg) or {}
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


def artifact_id(path: str | Path | None) -> str:
    """A short, stable id of a stored artifact: ``<task>/<file stem>`` (e.g. ``shapes_cls/patches_0001``)."""
    if not path:
        return ""
    path = Path(path)
    return f"{path.parent.name}/{path.stem}"


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


def resolve_device(spec: str | None) -> str:
    import torch

    spec = str(spec or "auto")
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return spec


# ---------------------------------------------------------------------------------------- scheduler
class AttackScheduler(AbstractBaseScheduler):
    """See the module docstring. ``run()`` returns ``{task: headline success rate}``."""

    def __init__(self, cfg: DictConfig, available_subroutines: Sequence[str] = ("train", "attack", "evaluate")) -> None:
        super().__init__(cfg=cfg, available_subroutines=list(available_subroutines))
        mode = cfg.get("mode") or {}
        self.universal = bool(mode.get("universal", False))
        self.num_examples = int(mode.get("num_examples", 4))
        self.device = resolve_device(cfg.get("device"))
        self.results: dict[str, Any] = {}
        self._tracking: Any = None

    # ------------------------------------------------------------------ plan
    def create_routine(self) -> None:
        if "train" in self.subroutines:
            for task in self.task_list:
                self.commands.append(self.train_model)
                self.params.append([task])
        if "attack" in self.subroutines:
            if self.universal:
                self.commands.append(self.attack_universal)
                self.params.append([])
            else:
                for task in self.task_list:
                    self.commands.append(self.attack_task)
                    self.params.append([task])
        if "evaluate" in self.subroutines:
            for task in self.task_list:
                self.commands.append(self.evaluate_patch)
                self.params.append([task])

    # ------------------------------------------------------------------ checks before any work
    def after_preparation_hook(self) -> None:
        self.preflight()
        self._tracking = ModeTracking.from_scheduler(self)

    def before_finishing_hook(self) -> None:
        if self._tracking is not None:
            self._tracking.finish(self.headline())

    def run(self) -> Any:
        try:
            return super().run()
        except BaseException:
            if self._tracking is not None:
                self._tracking.fail()
            raise

    def preflight(self) -> None:
        """Refuse bad input with one clear error before any step runs."""
        tasks = list(self.task_list)
        if not tasks:
            raise AttackConfigError(f"mode {self.cfg.mode.id!r}: task_list is empty")
        self._check_reuse(tasks)
        structs = [self.get_struct(t) for t in tasks]
        if "attack" in self.subroutines or "evaluate" in self.subroutines:
            for struct in structs:
                preset = self.preset_for(struct)
                patch_shape_for(preset, struct.image_size, struct.channels, struct.name)
                target = preset.get("target_class")
                if target is not None and struct.num_classes and not 0 <= int(target) < struct.num_classes:
                    raise AttackConfigError(
                        f"attack preset {preset.get('name')!r}: target_class {target} does not exist in task "
                        f"{struct.name!r}, which has {struct.num_classes} classes ({', '.join(struct.class_names)})"
                    )
        if self.universal:
            channels = {s.channels for s in structs}
            if len(channels) != 1:
                raise AttackConfigError(
                    f"mode.universal: one patch for all tasks needs one channel count, got "
                    f"{ {s.name: s.channels for s in structs} }"
                )
            shapes = {patch_shape_for(self.preset_for(s), s.image_size, s.channels, s.name) for s in structs}
            if len(shapes) != 1:
                raise AttackConfigError(
                    f"mode.universal: the presets of {tasks} give different patch shapes {sorted(shapes)}; "
                    "set attack.patch_fraction (or the presets' patch.size) so they agree"
                )
        if "train" not in self.subroutines and ("attack" in self.subroutines or "evaluate" in self.subroutines):
            for struct in structs:
                if self.model_path(struct) is None:
                    raise AttackConfigError(
                        f"task {struct.name!r} has no stored model in project {self.cfg.proj!r}: enable the "
                        "`train` subroutine, run `pandemonium train` first, or reuse.models=<project>"
                    )
        if "evaluate" in self.subroutines and "attack" not in self.subroutines:
            for struct in structs:
                if self.patch_path(struct) is None:
                    raise AttackConfigError(
                        f"task {struct.name!r} has no stored patch in project {self.cfg.proj!r}: run the "
                        "`attack` subroutine or point to an earlier project with reuse.patches=<project>"
                    )

    def _check_reuse(self, tasks: list[str]) -> None:
        reuse = _plain(self.cfg.get("reuse")) or {}
        for key, project in reuse.items():
            if not project:
                continue
            found = [t for t in tasks if self.fm.find_reusable(key, str(project), t) is not None]
            if key == "patches" and self.universal:
                found = found or ([UNIVERSAL_TASK] if self.fm.find_reusable(key, str(project), UNIVERSAL_TASK) else [])
            if not found:
                raise AttackConfigError(
                    f"reuse.{key}={project}: project {project!r} has no {key} for any of the tasks "
                    f"{', '.join(tasks)} (look in {self.proj_path.parent / str(project)})"
                )

    def preset_for(self, struct: Any) -> dict[str, Any]:
        return select_preset(self.cfg.get("attack") or {}, struct.name, struct.task_type.value)

    # ------------------------------------------------------------------ stored artifacts
    def _newest(self, key: str, task_name: str, suffix: str | None = None) -> Path | None:
        found = [p for p in self.fm.list_artifacts(key, task_name) if suffix is None or p.suffix == suffix]
        return found[-1] if found else None

    def model_path(self, struct: Any) -> Path | None:
        """The task's model: attached to the struct (this run / reuse) or the newest in this project."""
        path = struct.paths.get("models")
        if path:
            return Path(path)
        return self._newest("models", struct.name)

    def patch_path(self, struct: Any) -> Path | None:
        """The task's patch: attached to the struct (this run / reuse) or the newest in this project."""
        path = struct.paths.get("patches")
        if path:
            return Path(path)
        if self.universal:
            found = self._newest("patches", UNIVERSAL_TASK, ".pt")
            if found is not None:
                return found
        return self._newest("patches", struct.name, ".pt")

    def load_model(self, struct: Any) -> tuple[Any, dict[str, Any]]:
        from pandemonium.models.storage import load_model_artifact

        path = self.model_path(struct)
        if path is None:
            raise AttackConfigError(f"task {struct.name!r} has no stored model (enable the `train` subroutine)")
        struct.paths["models"] = path
        return load_model_artifact(path, task_name=struct.name, map_location=self.device)

    # ------------------------------------------------------------------ steps
    def train_model(self, task_name: str) -> dict[str, Any]:
        """Train the task's model with the ``train`` mode's code unless one is stored already."""
        struct = self.get_struct(task_name)
        existing = self.model_path(struct)
        if existing is not None:
            struct.paths["models"] = existing
            log.info("task %s: using stored model %s", task_name, existing)
            return {"model": str(existing), "trained": False}
        from pandemonium.schedulers.train import TrainScheduler

        # the train mode's own step: it only needs the scheduler base API (cfg, fm, get_struct,
        # create_datamodule, run_dir, step_seed), which this scheduler has
        with _lightning_progress_off(self.cfg):
            result = TrainScheduler.train_task(self, task_name)
        struct.paths["models"] = Path(result["path"])
        self.results.pop(task_name, None)
        if self._tracking is not None:
            fold = int(OmegaConf.select(self.cfg, "fold", default=0) or 0)
            self._tracking.adopt(f"train_{task_name}_fold{fold}", task=task_name,
                                 model_id=artifact_id(result["path"]))
        return {"model": result["path"], "trained": True,
                **{k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}

    def attack_task(self, task_name: str) -> dict[str, Any]:
        """Fit the patch of one task and store patch, checkpoint, pipeline YAML and curves."""
        struct = self.get_struct(task_name)
        model, meta = self.load_model(struct)
        preset = self.preset_for(struct)
        result = fit_patch(self, [(struct, model, meta, preset)], name=task_name)
        self._store_fit(result, [struct], task_name)
        return {"patch": str(struct.paths["patches"]), "summary": result.summary}

    def attack_universal(self) -> dict[str, Any]:
        """Fit ONE patch against every task of ``task_list`` (losses summed) and attach it to all."""
        members = []
        for task_name in self.task_list:
            struct = self.get_struct(task_name)
            model, meta = self.load_model(struct)
            members.append((struct, model, meta, self.preset_for(struct)))
        result = fit_patch(self, members, name=UNIVERSAL_TASK)
        structs = [m[0] for m in members]
        self._store_fit(result, structs, UNIVERSAL_TASK)
        return {"patch": str(structs[0].paths["patches"]), "summary": result.summary}

    def _store_fit(self, result: Any, structs: list[Any], owner: str) -> None:
        import torch

        from pandemonium.tracking.report import image_to_hwc

        patch = result.patch.detach().cpu()
        payload = {
            "format": "pandemonium-patch",
            "patch": patch,
            "tasks": [s.name for s in structs],
            "models": {s.name: str(s.paths.get("models")) for s in structs},
            "presets": {s.name: result.presets[s.name] for s in structs},
            "pipelines": result.pipeline_configs,
            "seed": int(self.cfg.seed),
            "summary": result.summary,
            "universal": owner == UNIVERSAL_TASK,
            "run_dir": str(self.run_dir),
            "command": command_line(),
        }
        patch_path = self.fm.construct_saving_path(obj=payload, key="patches", task_name=owner,
                                                   file_name="patch.pt")
        torch.save(payload, patch_path)
        # the PNG goes under `plots`, not beside the patch: `reuse.patches` takes the newest file there
        png = self.fm.construct_saving_path(obj=None, key="plots", task_name=owner,
                                            file_name=f"{patch_path.stem}.png")
        from PIL import Image

        Image.fromarray((image_to_hwc(patch) * 255).round().astype("uint8")).save(png)
        pipe_path = self.fm.construct_saving_path(obj=None, key="pipelines", task_name=owner,
                                                  file_name="pipeline.yaml")
        pipe_path.write_text(OmegaConf.to_yaml(OmegaConf.create(result.pipeline_configs)))
        curves_path = self.fm.construct_saving_path(obj=None, key=CURVES_KEY, task_name=owner,
                                                    file_name="curves.csv")
        result.curves.to_csv(curves_path, index=False)
        for struct in structs:
            struct.paths["patches"] = patch_path
            struct.paths["pipelines"] = pipe_path
            struct.paths[CURVES_KEY] = curves_path
            struct.paths["plots"] = png
            if result.checkpoint is not None:
                struct.paths["patch_checkpoints"] = Path(result.checkpoint)
        if self._tracking is not None:
            self._tracking.tag_child(result.run_id, tasks=[s.name for s in structs],
                                     models=[artifact_id(s.paths.get("models")) for s in structs],
                                     patch=artifact_id(patch_path))
        self.results.setdefault("fits", {})[owner] = result.summary

    def evaluate_patch(self, task_name: str) -> dict[str, Any]:
        """Fixed-condition evaluation of the task's patch on the task's model and held-out images."""
        struct = self.get_struct(task_name)
        patch_path = self.patch_path(struct)
        if patch_path is None:
            raise AttackConfigError(f"task {task_name!r}: no patch to evaluate (run the `attack` subroutine)")
        struct.paths["patches"] = patch_path
        model, meta = self.load_model(struct)
        preset = self.preset_for(struct)
        evaluation = evaluate_stored_patch(self, struct, model, preset, patch_path)
        table_path = self.fm.construct_saving_path(obj=evaluation.table, key="eval_tables", task_name=task_name,
                                                   file_name="eval.parquet")
        from pandemonium.pipeline.evaluation import save_table

        table_path = save_table(evaluation.table, table_path)
        summary = {**evaluation.summary, "task": task_name, "task_type": struct.task_type.value,
                   "metric": evaluation.metric, "rate": evaluation.rate,
                   "rate_ci_low": evaluation.ci[0], "rate_ci_high": evaluation.ci[1],
                   "patch_id": artifact_id(patch_path), "model_id": artifact_id(struct.paths.get("models")),
                   "patch_area_fraction": evaluation.patch_area_fraction, "preset": preset.get("name")}
        summary_path = self.fm.construct_saving_path(obj=summary, key=EVAL_SUMMARY_KEY, task_name=task_name,
                                                     file_name="summary.json")
        summary_path.write_text(json.dumps(_jsonable(summary), indent=1))
        examples_path = self.fm.construct_saving_path(obj=None, key=EXAMPLES_KEY, task_name=task_name,
                                                      file_name="examples.pt")
        import torch

        torch.save(evaluation.examples, examples_path)
        struct.paths["eval_tables"] = table_path
        struct.paths[EVAL_SUMMARY_KEY] = summary_path
        struct.paths[EXAMPLES_KEY] = examples_path
        if self._tracking is not None:
            self._tracking.log_evaluation(task_name, summary)
        self.results.setdefault("evaluations", {})[task_name] = summary
        return {"metric": evaluation.metric, "rate": evaluation.rate, "ci": list(evaluation.ci)}

    # ------------------------------------------------------------------ result
    def headline(self) -> dict[str, float]:
        """``{"<task>/<metric>": rate}`` of every evaluated task (from the stored summaries)."""
        out: dict[str, float] = {}
        for task in self.task_list:
            struct = self.get_struct(task)
            path = struct.paths.get(EVAL_SUMMARY_KEY)
            if path and Path(path).is_file():
                summary = json.loads(Path(path).read_text())
                out[f"{task}/{summary['metric']}"] = as_float(summary.get("rate"))
        return out

    def finish(self) -> Any:
        return self.headline()


@contextlib.contextmanager
def _lightning_progress_off(cfg: DictConfig) -> Any:
    """Lightning's default progress bar is rich's live display, which clashes with the executor's
    live step bar (rich keeps one live stack per console); training logs its epochs instead."""
    node = OmegaConf.select(cfg, "trainer.lightning")
    if node is None:
        yield
        return
    old = node.get("enable_progress_bar")
    with open_dict(node):
        node["enable_progress_bar"] = False
    try:
        yield
    finally:
        with open_dict(node):
            node["enable_progress_bar"] = old


def as_float(value: Any) -> float:
    """A stored number as float; JSON ``null`` (an undefined rate, e.g. nothing to attack) is NaN."""
    return float("nan") if value is None else float(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return _jsonable(value.item())
        except (ValueError, AttributeError):
            return str(value)
    return value


def command_line() -> str:
    """The command that started this process, as a user would retype it."""
    args = list(sys.argv)
    if args and Path(args[0]).name in ("pandemonium", "__main__.py", "main.py"):
        args[0] = "pandemonium"
    return " ".join(args)



# ------------------------------------------------------------------------------------------- engine
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
    from pandemonium.pipeline.base import StageError
    from pandemonium.pipeline.pipeline import Pipeline

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

    spec = dict((preset.get("patch") or {}).get("parameterisation") or {"_target_": "pandemonium.pipeline.patches.RawPatch"})
    target = spec.pop("_target_", "pandemonium.pipeline.patches.RawPatch")
    init = (preset.get("patch") or {}).get("init", "uniform")
    try:
        return get_class(target)(shape=list(shape), init=init, seed=int(seed), **spec)
    except Exception as err:
        raise AttackConfigError(
            f"attack preset {preset.get('name')!r}: patch parameterisation {target!r} does not build: {err}"
        ) from None


class MultiTaskPipeline(torch.nn.Module):
    """Several task pipelines fed the same patch batch (the universal attack).

    Looks like one pipeline to :class:`~pandemonium.pipeline.trainer.PatchTrainer`: outputs and
    kwargs are dicts by task, sampled params carry a ``<task>/`` prefix and replay per task.
    """

    def __init__(self, pipelines: Mapping[str, Any]) -> None:
        super().__init__()
        self.pipes = torch.nn.ModuleDict(dict(pipelines))

    def forward(self, x: Any, control: bool = False, evaluate: bool = False,
                params: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[dict, dict]:
        outputs, per_task = {}, {}
        for name, pipe in self.pipes.items():
            sub = None
            if params is not None:
                prefix = f"{name}/"
                sub = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            outputs[name], per_task[name] = pipe(x, control=control, evaluate=evaluate, params=sub)
        return outputs, {"per_task": per_task}

    def get_description(self) -> str:
        parts = [f"**{name}**:\n{pipe.get_description()}" for name, pipe in self.pipes.items()]
        return "Universal patch, one pipeline per task:\n\n" + "\n\n".join(parts)

    def to_config(self) -> dict[str, Any]:
        return {name: pipe.to_config() for name, pipe in self.pipes.items()}

    def get_last_sample_as_dict(self) -> dict[str, Any]:
        merged = {}
        for name, pipe in self.pipes.items():
            merged.update({f"{name}/{k}": v for k, v in pipe.get_last_sample_as_dict().items()})
        return merged


class MultiTaskLoss:
    """Per-task losses of the universal attack; terms are named ``<task>/<term>``."""

    def __init__(self, losses: Mapping[str, Any]) -> None:
        self.losses = dict(losses)

    def __call__(self, outputs: Mapping[str, Any], per_task: Mapping[str, Any] | None = None, **_: Any) -> dict:
        terms = {}
        for name, loss in self.losses.items():
            for key, value in loss(outputs[name], **(per_task or {}).get(name, {})).items():
                terms[f"{name}/{key}"] = value
        return terms


@dataclass
class FitOutcome:
    """What :func:`fit_patch` hands to the scheduler for storing."""

    patch: Any
    summary: dict[str, Any]
    curves: Any
    pipeline_configs: dict[str, Any]
    presets: dict[str, Any]
    checkpoint: Path | None
    run_id: str | None


def _curves_frame(history: list[dict[str, float]], evals: list[dict[str, float]]) -> Any:
    """One wide table: training terms per step, evaluation metrics (``eval_<name>``) at their steps."""
    import pandas as pd

    train = pd.DataFrame(history)
    interesting = ("success", "disappearance", "pixel_flip", "prediction_changed", "total_patch")
    keep = [c for c in (evals[0].keys() if evals else []) if c != "step" and any(w in c for w in interesting)
            and not c.endswith(("_se", "_ci_low", "_ci_high", "_n"))]
    ev = pd.DataFrame([{"step": e["step"], **{f"eval_{k}": e[k] for k in keep}} for e in evals])
    if train.empty:
        return ev
    if ev.empty:
        return train
    return train.merge(ev, on="step", how="outer").sort_values("step").reset_index(drop=True)


def _fit_dir(scheduler: AttackScheduler, owner: str) -> Path:
    """The trainer's folder for one fit (checkpoints, eval tables, TensorBoard). Recorded in the run
    directory so that ``continue`` resumes an interrupted fit from its last checkpoint."""
    record = scheduler.run_dir / "attack_fits.json"
    fits = json.loads(record.read_text()) if record.exists() else {}
    if owner in fits:
        return Path(fits[owner])
    marker = scheduler.fm.construct_saving_path(obj=None, key="patch_checkpoints", task_name=owner,
                                                file_name="fit.txt")
    marker.write_text(f"patch fit of {owner}, run {scheduler.run_dir}\n")
    folder = marker.with_suffix("")
    fits[owner] = str(folder)
    record.write_text(json.dumps(fits, indent=1))
    return folder


def fit_patch(scheduler: AttackScheduler, members: list[tuple[Any, Any, dict, dict]], name: str) -> FitOutcome:
    """Fit one patch against the (struct, model, model meta, preset) members with PatchTrainer."""
    from pandemonium.pipeline.trainer import PatchTrainer

    cfg = scheduler.cfg
    seed = int(scheduler.step_seed if scheduler.step_seed is not None else cfg.seed)
    pipelines, losses, weights, presets = {}, {}, {}, {}
    lead = members[0][3]
    for struct, model, _meta, preset in members:
        presets[struct.name] = preset
        pipelines[struct.name] = build_task_pipeline(preset, struct, model, cfg.data_dir, seed, int(cfg.get("fold", 0)))
        losses[struct.name] = build_loss(preset, struct.name)
        weights[struct.name] = {str(k): float(v) for k, v in (preset.get("weights") or {}).items()}
    universal = len(members) > 1 or name == UNIVERSAL_TASK
    shape = patch_shape_for(lead, members[0][0].image_size, members[0][0].channels, members[0][0].name)
    if universal:
        pipeline = MultiTaskPipeline(pipelines)
        loss = MultiTaskLoss(losses)
        all_weights = {f"{t}/{k}": v for t, w in weights.items() for k, v in w.items()}
        metric, mode, target_class = "total_patch", "min", None
    else:
        struct = members[0][0]
        pipeline, loss, all_weights = pipelines[struct.name], losses[struct.name], weights[struct.name]
        metric, mode = success_metric(lead, struct.task_type.value), "max"
        target_class = lead.get("target_class")
    tracking = scheduler._tracking
    out_dir = _fit_dir(scheduler, name)
    resume = out_dir / "checkpoints" / "last.pt"
    optimizer = dict(lead.get("optimizer") or {"name": "adam", "lr": 0.03})
    schedule = dict(lead.get("schedule") or {"name": "none"})
    try:
        trainer = PatchTrainer(
            pipeline, loss, all_weights,
            patch=build_patch(lead, shape, seed),
            batch_size=int(lead.get("batch_size", 16)),
            eval_batch_size=int(lead.get("eval_batch_size", lead.get("batch_size", 16))),
            num_eval=int(lead.get("num_eval", 64)),
            optimizer=str(optimizer.pop("name", "adam")), optimizer_kwargs=optimizer,
            schedule=str(schedule.pop("name", "none")), schedule_kwargs=schedule,
            best_metric=metric, best_mode=mode,
            eval_every=int(lead.get("eval_every", 50)),
            seed=seed, out_dir=out_dir,
            mlflow=tracking.tracking_uri if tracking is not None and tracking.enabled else False,
            mlflow_experiment=tracking.experiment if tracking is not None else None,
            tensorboard=bool(((cfg.get("logging") or {}).get("tensorboard") or {}).get("enabled", True)),
            run_name=f"attack/{name}", device=scheduler.device, target_class=target_class,
            progress=True,
        )
    except (ValueError, TypeError, KeyError) as err:
        raise AttackConfigError(f"attack of {name!r} (preset {lead.get('name')!r}): {err}") from None
    result = trainer.fit(int(lead["steps"]), resume_from=resume if resume.is_file() else None)
    patch = result.best_patch if not universal else result.patch
    last_eval = result.evals[-1] if result.evals else {}
    summary = {
        "steps": result.steps_run, "best_step": result.best_step, "best_metric": metric,
        "best_value": result.best_metric, "seconds": round(result.seconds, 2),
        **{k: v for k, v in last_eval.items() if not k.endswith(("_se", "_n"))},
    }
    configs = {}
    for task, pipe in pipelines.items():
        conf = pipe.to_config()
        conf["stages"][-1]["model"] = {"artifact": str(members[[m[0].name for m in members].index(task)][0].paths.get("models"))}
        configs[task] = conf
    return FitOutcome(patch, _jsonable(summary), _curves_frame(result.history, result.evals), configs, presets,
                      result.checkpoint_path, result.run_id)


class StoredEvaluation:
    """Evaluation of one stored patch on one task: the table, summary, headline rate and examples."""

    def __init__(self, table: Any, summary: dict[str, Any], metric: str, rate: float, ci: tuple[float, float],
                 examples: dict[str, Any], patch_area_fraction: float) -> None:
        self.table = table
        self.summary = summary
        self.metric = metric
        self.rate = rate
        self.ci = ci
        self.examples = examples
        self.patch_area_fraction = patch_area_fraction


def load_patch(path: str | Path) -> dict[str, Any]:
    """A stored patch file (``patches_*.pt``); errors name the file."""
    import torch

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise AttackConfigError(f"patch file {str(path)!r} does not load: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != "pandemonium-patch":
        raise AttackConfigError(f"{str(path)!r} is not a pandemonium patch file")
    return payload



def predictions_for_report(outputs: Any, task_type: str, class_names: Sequence[str],
                           threshold: float = 0.5) -> list[dict[str, Any]]:
    """Per-image predictions in a drawable form (see :class:`pandemonium.tracking.report.Prediction`)."""
    import torch

    preds = []
    if task_type == "classification":
        probs = outputs.softmax(1)
        score, label = probs.max(1)
        for s, lab in zip(score.tolist(), label.tolist()):
            preds.append({"label": class_names[lab] if lab < len(class_names) else str(lab), "score": s})
    elif task_type == "detection":
        try:
            from pandemonium.models.detector import decode

            decoded = decode(outputs, score_threshold=threshold)
        except Exception:  # noqa: BLE001 - any detector without decode: threshold the dense layout
            decoded = None
        for i in range(outputs["objectness"].shape[0]):
            if decoded is not None and isinstance(decoded, list):
                d = decoded[i]
                boxes, scores, labels = d["boxes"], d["scores"], d["labels"]
            else:
                keep = outputs["objectness"][i] >= threshold
                boxes = outputs["boxes"][i][keep]
                scores = outputs["objectness"][i][keep]
                labels = outputs["class_scores"][i][keep].argmax(-1)
            preds.append({"boxes": boxes.detach().cpu().numpy(), "box_scores": scores.detach().cpu().tolist(),
                          "box_labels": [class_names[int(c)] if int(c) < len(class_names) else str(int(c))
                                         for c in torch.as_tensor(labels).tolist()]})
    elif task_type == "semantic_segmentation":
        for mask in outputs.argmax(1):
            preds.append({"mask": mask.detach().cpu().numpy()})
    else:
        preds = [{} for _ in range(len(outputs))]
    return preds


def evaluate_stored_patch(scheduler: AttackScheduler, struct: Any, model: Any, preset: Mapping[str, Any],
                          patch_path: Path) -> StoredEvaluation:
    """Fixed-condition evaluation (conditions drawn once from the run seed) of a stored patch."""

    from pandemonium.pipeline.evaluation import FixedEvaluation
    from pandemonium.tracking.transfer import success_from_eval_table, summarise_rate

    cfg = scheduler.cfg
    payload = load_patch(patch_path)
    preset = with_patch_target(preset, payload, struct.name)
    patch = payload["patch"].float()
    if patch.shape[0] != struct.channels:
        raise AttackConfigError(
            f"patch {artifact_id(patch_path)} has {patch.shape[0]} channels but task {struct.name!r} images have "
            f"{struct.channels}"
        )
    seed = int(cfg.seed)
    pipeline = build_task_pipeline(preset, struct, model, cfg.data_dir, seed, int(cfg.get("fold", 0)))
    pipeline.to(scheduler.device)
    loss = build_loss(preset, struct.name)
    weights = {str(k): float(v) for k, v in (preset.get("weights") or {}).items()}
    metric = success_metric(preset, struct.task_type.value)
    evaluation = FixedEvaluation(pipeline, loss, weights, num_eval=int(preset.get("num_eval", 64)),
                                 batch_size=int(preset.get("eval_batch_size", 64)), seed=seed,
                                 target_class=preset.get("target_class"))
    patch = patch.to(scheduler.device)
    result = evaluation.run(patch, step=0)
    success, weight = success_from_eval_table(result.table, metric)
    rate = summarise_rate(success, weight, seed=seed)
    examples = collect_examples(pipeline, patch, evaluation.conditions[0], struct, scheduler.num_examples)
    coverage = examples.pop("patch_coverage", None)
    area = float(coverage) if coverage is not None else float("nan")
    return StoredEvaluation(result.table, _jsonable(result.summary), metric, rate.rate, (rate.ci_low, rate.ci_high),
                            examples, area)


def collect_examples(pipeline: Any, patch: Any, params: Mapping[str, Any], struct: Any, n: int) -> dict[str, Any]:
    """Images the model saw with and without the patch (same conditions), its predictions, the truth."""
    import torch

    from pandemonium.pipeline.evaluation import _expand_patch, pipeline_stages

    batch = len(next(iter(params.values()))) if params else 1
    n = max(1, min(int(n), batch))
    captured: list[Any] = []
    last = pipeline_stages(pipeline)[-1]

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(args[0] if args else kwargs.get("x"))

    handle = last.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            x = _expand_patch(patch, batch)
            y_p, kw_p = pipeline(x, evaluate=True, params=params)
            y_c, _ = pipeline(x, evaluate=True, control=True, params=params)
    finally:
        handle.remove()
    task_type = struct.task_type.value

    def head(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v[:n] for k, v in value.items()}
        return value[:n]

    targets = kw_p.get("targets") or {}
    truth: list[str] = []
    if task_type == "detection" and "boxes" in targets:
        truth = [f"{len(b)} object(s)" for b in list(targets["boxes"])[:n]]
    elif task_type == "classification" and "class" in targets:
        truth = [struct.class_names[int(c)] if int(c) < len(struct.class_names) else str(int(c))
                 for c in torch.as_tensor(targets["class"])[:n].tolist()]
    # the share of the image the patch covers, from the implanter's coverage mask (exact under rotation
    # and perspective, unlike the bounding box)
    patch_mask = targets.get("patch_mask")
    coverage = float(patch_mask.float().mean()) if isinstance(patch_mask, torch.Tensor) else None
    return {
        "task": struct.name, "task_type": task_type,
        "before": captured[1][:n].detach().cpu(), "after": captured[0][:n].detach().cpu(),
        "pred_before": predictions_for_report(head(y_c), task_type, struct.class_names),
        "pred_after": predictions_for_report(head(y_p), task_type, struct.class_names),
        "truth": truth,
        "patch_coverage": coverage,
    }


# ------------------------------------------------------------------------------------------ MLflow
def mlflow_name(key: str) -> str:
    """A metric name MLflow accepts (alphanumerics, ``_ - . space : /``); ``a -> b`` becomes ``a_to_b``."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(key).replace(" -> ", "_to_"))


class ModeTracking:
    """One MLflow parent run per mode invocation; children per task are opened by the steps.

    The parent run id is kept in the run directory so that ``continue`` resumes the same parent.
    """

    FILE = "mlflow_parent_run.json"

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str | None, run_dir: Path,
                 name: str, tags: Mapping[str, str]) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_dir = run_dir
        self.name = name
        self.tags = dict(tags)
        self.run_id: str | None = None
        if enabled:
            self._start()

    @classmethod
    def from_scheduler(cls, scheduler: AbstractBaseScheduler) -> ModeTracking:
        cfg = scheduler.cfg
        mlflow_cfg = ((cfg.get("logging") or {}).get("mlflow")) or {}
        enabled = bool(mlflow_cfg.get("enabled", True))
        uri = experiment = None
        if enabled:
            from pandemonium.tracking.mlflow_utils import check_tracking_uri, resolve_tracking_uri

            uri = check_tracking_uri(resolve_tracking_uri(mlflow_cfg.get("tracking_uri"), cfg.out_dir))
            experiment = str(mlflow_cfg.get("experiment_name") or cfg.proj)
        mode_id = str((cfg.get("mode") or {}).get("id"))
        tags = {"pandemonium.mode": mode_id, "pandemonium.proj": str(cfg.proj),
                "pandemonium.run_dir": str(scheduler.run_dir), "pandemonium.tasks": ",".join(scheduler.task_list)}
        return cls(enabled, uri, experiment, scheduler.run_dir, f"{mode_id} {scheduler.run_dir.name}", tags)

    def _start(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.experiment)
        while mlflow.active_run() is not None:  # a leftover run of an earlier mode in this process
            mlflow.end_run()
        record = self.run_dir / self.FILE
        run_id = json.loads(record.read_text()).get("run_id") if record.exists() else None
        if run_id:
            run = mlflow.start_run(run_id=run_id)
        else:
            run = mlflow.start_run(run_name=self.name, tags=self.tags)
            record.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": self.tracking_uri}))
        self.run_id = run.info.run_id

    def tag_child(self, run_id: str | None, tasks: Sequence[str], models: Sequence[str], patch: str) -> None:
        if not self.enabled or not run_id:
            return
        import mlflow

        client = mlflow.MlflowClient()
        client.set_tag(run_id, "task", ",".join(tasks))
        client.set_tag(run_id, "model_id", ",".join(models))
        client.set_tag(run_id, "patch_id", patch)

    def adopt(self, run_name: str, **tags: str) -> None:
        """Make the runs named ``run_name`` that started during this mode run (e.g. the Lightning
        logger's training run, which opens its own top-level run) children of the parent run."""
        if not self.enabled or not self.run_id:
            return
        import mlflow

        client = mlflow.MlflowClient()
        try:
            parent = client.get_run(self.run_id)
            found = client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"attributes.run_name = '{run_name}' and attributes.start_time >= {parent.info.start_time}",
            )
            for run in found:
                if run.info.run_id == self.run_id or "mlflow.parentRunId" in run.data.tags:
                    continue
                client.set_tag(run.info.run_id, "mlflow.parentRunId", self.run_id)
                for key, value in tags.items():
                    client.set_tag(run.info.run_id, key, str(value))
        except Exception as err:  # noqa: BLE001 - tidying the run tree must never fail a finished step
            log.warning("MLflow: could not attach run %s to the mode's parent run: %s", run_name, err)

    def log_evaluation(self, task: str, summary: Mapping[str, Any]) -> None:
        """A child run ``evaluate/<task>`` with the headline rate, its CI and the ids as tags."""
        if not self.enabled:
            return
        import mlflow

        tags = {"task": task, "model_id": str(summary.get("model_id", "")), "patch_id": str(summary.get("patch_id", "")),
                "pandemonium.step": "evaluate"}
        with mlflow.start_run(run_name=f"evaluate/{task}", nested=True, tags=tags):
            metrics = {k: float(v) for k, v in summary.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
            mlflow.log_metrics({mlflow_name(k): v for k, v in metrics.items()})

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        import mlflow

        clean = {mlflow_name(k): float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        if clean:
            mlflow.MlflowClient().log_batch(self.run_id, metrics=[
                mlflow.entities.Metric(k, v, 0, 0) for k, v in clean.items()])

    def finish(self, headline: Mapping[str, float] | None = None) -> None:
        if not self.enabled:
            return
        import mlflow

        if headline:
            self.log_metrics(headline)
        if mlflow.active_run() is not None:
            mlflow.end_run(status="FINISHED")
        self.enabled = False

    def fail(self) -> None:
        if not self.enabled:
            return
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")
        self.enabled = False
