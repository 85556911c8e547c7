"""The ``evaluate`` mode: every stored patch against every stored model, under fixed conditions.

For the tasks of ``task_list``, the newest patch of each task (and a universal patch, if one was
fitted) is evaluated on the newest model of each task: the model's own evaluation pipeline (its
task's attack preset, held-out images), conditions drawn ONCE from ``seed`` and replayed for every
patch, each sample patched and as control. Outputs (FileManager key ``transfer``):

- ``transfer.csv``: the transfer matrix in long form (patch, model, rate, 95% CI, n) and
  ``transfer_records.parquet``: the per-sample success behind it;
- ``robustness_scale.csv`` / ``robustness_angle.csv``: rate per patch scale (a factor on the
  sampled scale) and per viewing angle (tilt in degrees about the vertical axis), everything else
  fixed.

Rates: attack success (classification), disappearance (detection), pixel flip (segmentation) of the
*model's* task; CIs from :mod:`pandemonium.report.transfer`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from pandemonium.attack.presets import (
    AttackConfigError,
    build_loss,
    build_task_pipeline,
    stage_configs,
    success_metric,
    with_patch_target,
)
from pandemonium.modes.attack import AttackScheduler
from pandemonium.modes.steps import UNIVERSAL_TASK
from pandemonium.modes.steps.evaluate_patch import load_patch
from pandemonium.report.transfer import (
    robustness_curve,
    success_from_eval_table,
    transfer_matrix,
)
from pandemonium.runs.provenance import artifact_id

log = logging.getLogger(__name__)

__all__ = ["EvaluateScheduler", "EvaluateSteps", "TRANSFER_KEY", "read_summary", "transfer_headline"]

TRANSFER_KEY = "transfer"


def _override(conditions: list[dict[str, Any]], stage: int, name: str, fn: Any) -> list[dict[str, Any]]:
    """A copy of recorded conditions with the param ``name`` of the stage at position ``stage`` (for
    every patch key: ``"<pos>_<Stage>/<name>"`` or ``"<pos>_<Stage>/<key>.<name>"``) replaced by ``fn(old)``."""
    pattern = re.compile(rf"^{int(stage)}_[^/]+/(?:.+\.)?{re.escape(name)}$")
    out = []
    for batch in conditions:
        new = dict(batch)
        hit = False
        for key, value in batch.items():
            if pattern.match(key):
                arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                replaced = np.asarray(fn(arr), dtype=arr.dtype)
                new[key] = torch.as_tensor(replaced, device=value.device) if isinstance(value, torch.Tensor) else replaced
                hit = True
        if not hit:
            raise KeyError(f"{stage}_*/{name}")
        out.append(new)
    return out


class EvaluateSteps:
    """The ``transfer`` and ``robustness`` steps; mixed into schedulers that have :class:`AttackScheduler`'s
    helpers (``get_struct``, ``load_model``, ``patch_path``, ``preset_for``)."""

    cfg: DictConfig

    # ------------------------------------------------------------------ inputs
    def evaluation_settings(self) -> dict[str, Any]:
        mode = self.cfg.get("mode") or {}
        return {
            "num_eval": int(mode.get("num_eval", 128)),
            "batch_size": int(mode.get("batch_size", 64)),
            "scales": [float(s) for s in (mode.get("scales") or [])],
            "angles": [float(a) for a in (mode.get("angles") or [])],
            "curve_pairs": str(mode.get("curve_pairs", "diagonal")),
        }

    def stored_patches(self) -> dict[str, Path]:
        """patch id -> path: the newest patch of every task (and the universal one) in this project."""
        found: dict[str, Path] = {}
        for task in self.task_list:
            path = self.patch_path(self.get_struct(task))
            if path is not None:
                found[artifact_id(path)] = path
        universal = self._newest("patches", UNIVERSAL_TASK, ".pt")
        if universal is not None:
            found[artifact_id(universal)] = universal
        return found

    def check_evaluation_inputs(self) -> None:
        if not self.task_list:
            raise AttackConfigError(f"mode {self.cfg.mode.id!r}: task_list is empty")
        self.check_evaluation_settings()
        self._check_reuse(list(self.task_list))
        missing_models = [t for t in self.task_list if self.model_path(self.get_struct(t)) is None]
        if missing_models and "train" not in self.subroutines:
            raise AttackConfigError(
                f"no stored model for task(s) {', '.join(missing_models)} in project {self.cfg.proj!r}: run "
                "`pandemonium train` / `pandemonium attack` first, or reuse.models=<project>"
            )
        if not self.stored_patches() and "attack" not in self.subroutines:
            raise AttackConfigError(
                f"no stored patch for task(s) {', '.join(self.task_list)} in project {self.cfg.proj!r}: run "
                "`pandemonium attack` first, or reuse.patches=<project>"
            )

    def check_evaluation_settings(self) -> None:
        settings = self.evaluation_settings()
        if any(s <= 0 for s in settings["scales"]):
            raise AttackConfigError(f"mode.scales must be positive factors, got {settings['scales']}")
        if any(not 0 <= abs(a) < 90 for a in settings["angles"]):
            raise AttackConfigError(f"mode.angles must lie in (-90, 90) degrees, got {settings['angles']}")
        if settings["curve_pairs"] not in ("diagonal", "all"):
            raise AttackConfigError(f"mode.curve_pairs must be 'diagonal' or 'all', got {settings['curve_pairs']!r}")

    # ------------------------------------------------------------------ evaluation of one pair
    def _evaluator(self, model_task: str, extra_tilt: float | None = None) -> tuple[Any, Any, str]:
        """(FixedEvaluation, struct, metric) for the model of ``model_task`` with conditions from ``seed``."""
        from pandemonium.attack.evaluation import FixedEvaluation

        settings = self.evaluation_settings()
        struct = self.get_struct(model_task)
        model, _meta = self.load_model(struct)
        preset = self.preset_for(struct)
        stages = stage_configs(preset, struct, self.cfg.data_dir, int(self.cfg.get("fold", 0)))
        if extra_tilt is not None:
            # the viewing angle: tilt the whole scene (patch included) right after implanting; its
            # sampled angle is overridden per curve point
            stages = [stages[0], {"_target_": "ViewingAngleTilt", "max_tilt": max(1.0, float(extra_tilt)), "p": 1.0,
                                  "padding_mode": "border"}, *stages[1:]]
        seed = int(self.cfg.seed)
        pipeline = build_task_pipeline(preset, struct, model, self.cfg.data_dir, seed, eval_stages=stages)
        pipeline.to(self.device)
        weights = {str(k): float(v) for k, v in (preset.get("weights") or {}).items()}
        evaluation = FixedEvaluation(pipeline, build_loss(preset, struct.name), weights,
                                     num_eval=settings["num_eval"], batch_size=settings["batch_size"], seed=seed,
                                     target_class=preset.get("target_class"))
        return evaluation, struct, success_metric(preset, struct.task_type.value)

    def _aim(self, evaluation: Any, path: Path, struct: Any) -> None:
        """Targeted success counts hits on the class the patch was fitted for on this task, if any."""
        preset = with_patch_target(self.preset_for(struct), load_patch(path), struct.name)
        evaluation.target_class = preset.get("target_class")

    def _patch_tensor(self, path: Path, struct: Any) -> torch.Tensor | None:
        patch = load_patch(path)["patch"].float()
        if patch.shape[0] != struct.channels:
            log.warning("patch %s has %d channels, task %s images %d: pair skipped", artifact_id(path),
                        patch.shape[0], struct.name, struct.channels)
            return None
        height, width = struct.image_size
        if patch.shape[1] > height or patch.shape[2] > width:
            log.warning("patch %s (%dx%d) is larger than the %dx%d images of %s: pair skipped", artifact_id(path),
                        patch.shape[1], patch.shape[2], height, width, struct.name)
            return None
        return patch.to(self.device)

    @staticmethod
    def _records(table: pd.DataFrame, success_column: str, **ids: Any) -> pd.DataFrame:
        success, weight = success_from_eval_table(table, success_column)
        frame = pd.DataFrame({"sample": np.arange(len(table)), "success": success, "weight": weight})
        for key, value in ids.items():
            frame[key] = value
        return frame

    # ------------------------------------------------------------------ steps
    def transfer(self) -> dict[str, Any]:
        """Transfer matrix: every stored patch x every stored model, patched vs control."""
        patches = self.stored_patches()
        frames = []
        for model_task in self.task_list:
            evaluation, struct, metric = self._evaluator(model_task)
            model_id = artifact_id(struct.paths.get("models"))
            for patch_id, path in patches.items():
                patch = self._patch_tensor(path, struct)
                if patch is None:
                    continue
                self._aim(evaluation, path, struct)
                result = evaluation.run(patch, step=0)
                frames.append(self._records(result.table, metric, patch_id=patch_id, model_id=model_id,
                                            patch_task=path.parent.name, model_task=model_task, metric=metric))
        if not frames:
            raise AttackConfigError("evaluate: no patch fits any model of task_list (channels / image size)")
        records = pd.concat(frames, ignore_index=True)
        table = transfer_matrix(records.drop(columns="metric"), seed=int(self.cfg.seed))
        metrics = records.groupby("model_id")["metric"].first()
        table["metric"] = table["model_id"].map(metrics)
        records_path = self.fm.construct_saving_path(obj=records, key=TRANSFER_KEY, file_name="transfer_records.parquet")
        records.to_parquet(records_path, index=False)
        table_path = self.fm.construct_saving_path(obj=table, key=TRANSFER_KEY, file_name="transfer.csv")
        table.to_csv(table_path, index=False)
        for task in self.task_list:
            self.get_struct(task).paths[TRANSFER_KEY] = table_path
        log.info("transfer matrix (%d patches x %d models) -> %s", len(patches), len(self.task_list), table_path)
        return {"transfer": str(table_path), "pairs": len(table)}

    def robustness(self) -> dict[str, Any]:
        """Rate vs patch scale and vs viewing angle for the diagonal (or all) patch x model pairs."""
        settings = self.evaluation_settings()
        patches = self.stored_patches()
        out: dict[str, Any] = {}
        for condition, values in (("scale", settings["scales"]), ("angle", settings["angles"])):
            if not values:
                continue
            frames = []
            for model_task in self.task_list:
                tilt = max(abs(v) for v in values) if condition == "angle" else None
                evaluation, struct, metric = self._evaluator(model_task, extra_tilt=tilt)
                model_id = artifact_id(struct.paths.get("models"))
                for patch_id, path in patches.items():
                    own = path.parent.name in (model_task, UNIVERSAL_TASK)
                    if settings["curve_pairs"] == "diagonal" and not own:
                        continue
                    patch = self._patch_tensor(path, struct)
                    if patch is None:
                        continue
                    self._aim(evaluation, path, struct)
                    base = evaluation.draw(patch)
                    for value in values:
                        try:
                            if condition == "scale":  # the implanter is stage 0
                                conditions = _override(base, 0, "scale", lambda a, v=value: a * v)
                            else:  # the tilt stage right after it
                                conditions = _override(base, 1, "tilt", lambda a, v=value: np.full_like(a, v))
                                conditions = _override(conditions, 1, "axis_angle", lambda a: np.full_like(a, 90.0))
                        except KeyError as err:
                            raise AttackConfigError(
                                f"robustness over {condition}: the evaluation pipeline of task {model_task!r} samples "
                                f"no parameter {err.args[0]!r} (preset {self.preset_for(struct).get('name')!r}; the "
                                "first stage must be an implanter with a sampled scale)"
                            ) from None
                        evaluation.conditions = conditions
                        try:
                            result = evaluation.run(patch, step=0)
                        finally:
                            evaluation.conditions = base
                        frames.append(self._records(result.table, metric, patch_id=patch_id, model_id=model_id,
                                                    **{condition: value}))
            if not frames:
                continue
            curve = robustness_curve(pd.concat(frames, ignore_index=True), condition, seed=int(self.cfg.seed))
            path = self.fm.construct_saving_path(obj=curve, key=TRANSFER_KEY, file_name=f"robustness_{condition}.csv")
            curve.to_csv(path, index=False)
            for task in self.task_list:
                self.get_struct(task).paths[f"robustness_{condition}"] = path
            out[condition] = str(path)
        return out


class EvaluateScheduler(EvaluateSteps, AttackScheduler):
    """``pandemonium evaluate``: transfer matrix and robustness curves of the stored patches.

    ``run()`` returns ``{"<patch> -> <model>": rate}``.
    """

    def __init__(self, cfg: DictConfig) -> None:
        AttackScheduler.__init__(self, cfg, available_subroutines=("transfer", "robustness"))

    def create_routine(self) -> None:
        if "transfer" in self.subroutines:
            self.commands.append(self.transfer)
            self.params.append([])
        if "robustness" in self.subroutines:
            self.commands.append(self.robustness)
            self.params.append([])

    def preflight(self) -> None:
        self.check_evaluation_inputs()

    def headline(self) -> dict[str, float]:
        return transfer_headline(self)

    def finish(self) -> Any:
        return self.headline()


def transfer_headline(scheduler: Any) -> dict[str, float]:
    """``{"<patch> -> <model>": rate}`` from the newest transfer table of the run's structs."""
    for task in scheduler.task_list:
        path = scheduler.get_struct(task).paths.get(TRANSFER_KEY)
        if path and Path(path).is_file():
            table = pd.read_csv(path)
            return {f"{r.patch_id} -> {r.model_id}": float(r.rate) for r in table.itertuples()}
    return {}


def read_summary(path: str | Path | None) -> dict[str, Any]:
    if not path or not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text())

