"""The ``attack`` mode: per task, fit a patch against the task's model, evaluate it, store it.

Subroutines (``mode.subroutines``):

``train``
    Train a model for each task that has none (stored in this run, found in this project, or
    attached by ``reuse.models=<project>``), with the ``train`` mode's code.
``attack``
    Build the pipeline from the task's attack preset (``configs/attack``), fit the patch with
    :class:`~pandemonium.attack.trainer.PatchTrainer`, store the patch, its checkpoint, the
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from pandemonium.attack.presets import AttackConfigError, patch_shape_for, select_preset
from pandemonium.modes.steps import CURVES_KEY, EVAL_SUMMARY_KEY, EXAMPLES_KEY, UNIVERSAL_TASK
from pandemonium.modes.steps.evaluate_patch import evaluate_stored_patch
from pandemonium.modes.steps.fit import fit_patch
from pandemonium.plain import as_float, to_plain
from pandemonium.runs.base import AbstractBaseScheduler
from pandemonium.runs.provenance import artifact_id, command_line, resolve_device
from pandemonium.tracking.mode_run import ModeTracking

log = logging.getLogger(__name__)

__all__ = ["AttackScheduler"]



# ------------------------------------------------------------------------------------------ presets


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
        reuse = to_plain(self.cfg.get("reuse")) or {}
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
        from pandemonium.modes.train import TrainScheduler

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

        from pandemonium.report.html import image_to_hwc

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
            "continue_changes": self.continue_changes,  # overrides changed by `continue allow_changes=true`
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
                                     patch=artifact_id(patch_path), presets=result.presets)
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
        from pandemonium.attack.evaluation import save_table

        table_path = save_table(evaluation.table, table_path)
        summary = {**evaluation.summary, "task": task_name, "task_type": struct.task_type.value,
                   "metric": evaluation.metric, "rate": evaluation.rate,
                   "rate_ci_low": evaluation.ci[0], "rate_ci_high": evaluation.ci[1],
                   "patch_id": artifact_id(patch_path), "model_id": artifact_id(struct.paths.get("models")),
                   "patch_area_fraction": evaluation.patch_area_fraction, "preset": preset.get("name")}
        summary_path = self.fm.construct_saving_path(obj=summary, key=EVAL_SUMMARY_KEY, task_name=task_name,
                                                     file_name="summary.json")
        summary_path.write_text(json.dumps(to_plain(summary), indent=1))
        examples_path = self.fm.construct_saving_path(obj=None, key=EXAMPLES_KEY, task_name=task_name,
                                                      file_name="examples.pt")

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


# ------------------------------------------------------------------------------------------- engine


# ------------------------------------------------------------------------------------------ MLflow


