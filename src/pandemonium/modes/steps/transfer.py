"""The ``transfer`` and ``robustness`` steps: every stored patch against every stored model, under fixed
conditions drawn once from the seed (FileManager key ``transfer``).

- ``transfer.csv``: the transfer matrix in long form (patch, model, rate, 95% CI, n) and
  ``transfer_records.parquet``: the per-sample success behind it;
- ``robustness_scale.csv`` / ``robustness_angle.csv``: rate per patch scale (a factor on the sampled
  scale of the implanter) and per viewing angle (a tilt stage right after the implanter), everything
  else fixed.
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

from pandemonium.attack.spec import AttackConfigError, EvaluationPlan
from pandemonium.modes.steps import UNIVERSAL_TASK
from pandemonium.modes.steps.context import ModeContext
from pandemonium.modes.steps.evaluate_patch import load_patch
from pandemonium.modes.steps.models import ModelSource
from pandemonium.report.transfer import robustness_curve, success_from_eval_table, transfer_matrix
from pandemonium.runs.provenance import artifact_id

log = logging.getLogger(__name__)

__all__ = ["TRANSFER_KEY", "Transfer", "override_param", "read_summary", "transfer_headline"]

TRANSFER_KEY = "transfer"


def override_param(conditions: list[dict[str, Any]], stage: int, name: str, fn: Any) -> list[dict[str, Any]]:
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


def read_summary(path: str | Path | None) -> dict[str, Any]:
    """A stored evaluation summary (``{}`` when there is none)."""
    if not path or not Path(path).is_file():
        return {}
    return json.loads(Path(path).read_text())


def transfer_headline(ctx: ModeContext) -> dict[str, float]:
    """``{"<patch> -> <model>": rate}`` from the newest transfer table of the run's structs."""
    for task in ctx.task_list:
        path = ctx.get_struct(task).paths.get(TRANSFER_KEY)
        if path and Path(path).is_file():
            table = pd.read_csv(path)
            return {f"{r.patch_id} -> {r.model_id}": float(r.rate) for r in table.itertuples()}
    return {}


def _records(table: pd.DataFrame, success_column: str, **ids: Any) -> pd.DataFrame:
    success, weight = success_from_eval_table(table, success_column)
    frame = pd.DataFrame({"sample": np.arange(len(table)), "success": success, "weight": weight})
    for key, value in ids.items():
        frame[key] = value
    return frame


class Transfer:
    """Transfer matrix and robustness curves of the stored patches on the stored models (``plan``:
    the fixed conditions of the mode config, ``mode.num_eval``, ``mode.scales``, ...)."""

    def __init__(self, ctx: ModeContext, models: ModelSource, plan: EvaluationPlan) -> None:
        self.ctx = ctx
        self.models = models
        self.plan = plan

    # ------------------------------------------------------------------ evaluation of one pair
    def evaluator(self, model_task: str, tilt: float | None = None) -> tuple[Any, Any, Any]:
        """(FixedEvaluation, struct, spec) for the model of ``model_task`` with conditions from the seed;
        ``tilt``: a viewing-angle stage (up to ``tilt`` degrees) right after the implanter."""
        from pandemonium.attack.evaluation import FixedEvaluation

        ctx = self.ctx
        struct = ctx.get_struct(model_task)
        model, _meta = self.models.load(struct)
        spec = ctx.spec(struct)
        # the viewing angle tilts the whole scene (patch included) right after implanting; its sampled
        # angle is overridden per curve point
        extra = [] if tilt is None else [{"_target_": "ViewingAngleTilt", "max_tilt": max(1.0, float(tilt)), "p": 1.0,
                                          "padding_mode": "border"}]
        pipeline = spec.build_pipeline(model, struct, ctx.data_dir, ctx.seed, ctx.fold, after_implanter=extra)
        pipeline.to(ctx.device)
        evaluation = FixedEvaluation(pipeline, spec.build_loss(), dict(spec.weights), num_eval=self.plan.num_eval,
                                     batch_size=self.plan.batch_size, seed=ctx.seed, target_class=spec.target_class)
        return evaluation, struct, spec

    def _aim(self, evaluation: Any, path: Path, spec: Any) -> None:
        """Targeted success counts hits on the class the patch was fitted for on this task, if any."""
        evaluation.target_class = spec.for_patch(load_patch(path)).target_class

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
        return patch.to(self.ctx.device)

    # ------------------------------------------------------------------ steps
    def transfer(self) -> dict[str, Any]:
        """Transfer matrix: every stored patch x every stored model, patched vs control."""
        ctx = self.ctx
        patches = ctx.stored_patches()
        frames = []
        for model_task in ctx.task_list:
            evaluation, struct, spec = self.evaluator(model_task)
            model_id = artifact_id(struct.paths.get("models"))
            metric = spec.success_metric
            for patch_id, path in patches.items():
                patch = self._patch_tensor(path, struct)
                if patch is None:
                    continue
                self._aim(evaluation, path, spec)
                result = evaluation.run(patch, step=0)
                frames.append(_records(result.table, metric, patch_id=patch_id, model_id=model_id,
                                       patch_task=path.parent.name, model_task=model_task, metric=metric))
        if not frames:
            raise AttackConfigError("evaluate: no patch fits any model of task_list (channels / image size)")
        records = pd.concat(frames, ignore_index=True)
        table = transfer_matrix(records.drop(columns="metric"), seed=ctx.seed)
        metrics = records.groupby("model_id")["metric"].first()
        table["metric"] = table["model_id"].map(metrics)
        records_path = ctx.fm.construct_saving_path(obj=records, key=TRANSFER_KEY, file_name="transfer_records.parquet")
        records.to_parquet(records_path, index=False)
        table_path = ctx.fm.construct_saving_path(obj=table, key=TRANSFER_KEY, file_name="transfer.csv")
        table.to_csv(table_path, index=False)
        for task in ctx.task_list:
            ctx.get_struct(task).paths[TRANSFER_KEY] = table_path
        log.info("transfer matrix (%d patches x %d models) -> %s", len(patches), len(ctx.task_list), table_path)
        return {"transfer": str(table_path), "pairs": len(table)}

    def _curve_conditions(self, base: list[dict[str, Any]], condition: str, value: float, implanter: int,
                          spec: Any) -> list[dict[str, Any]]:
        try:
            if condition == "scale":  # the implanter's sampled scale
                return override_param(base, implanter, "scale", lambda a, v=value: a * v)
            # the tilt stage right after the implanter
            conditions = override_param(base, implanter + 1, "tilt", lambda a, v=value: np.full_like(a, v))
            return override_param(conditions, implanter + 1, "axis_angle", lambda a: np.full_like(a, 90.0))
        except KeyError as err:
            raise AttackConfigError(
                f"robustness over {condition}: the evaluation pipeline of task {spec.task!r} samples no parameter "
                f"{err.args[0]!r} (preset {spec.name!r}; the implanter must sample a scale)"
            ) from None

    def robustness(self) -> dict[str, Any]:
        """Rate vs patch scale and vs viewing angle for the diagonal (or all) patch x model pairs."""
        ctx, plan = self.ctx, self.plan
        patches = ctx.stored_patches()
        out: dict[str, Any] = {}
        for condition, values in (("scale", plan.scales), ("angle", plan.angles)):
            if not values:
                continue
            frames = []
            for model_task in ctx.task_list:
                tilt = max(abs(v) for v in values) if condition == "angle" else None
                evaluation, struct, spec = self.evaluator(model_task, tilt=tilt)
                implanter = spec.implanter_index()
                model_id = artifact_id(struct.paths.get("models"))
                for patch_id, path in patches.items():
                    own = path.parent.name in (model_task, UNIVERSAL_TASK)
                    if plan.curve_pairs == "diagonal" and not own:
                        continue
                    patch = self._patch_tensor(path, struct)
                    if patch is None:
                        continue
                    self._aim(evaluation, path, spec)
                    base = evaluation.draw(patch)
                    for value in values:
                        evaluation.conditions = self._curve_conditions(base, condition, value, implanter, spec)
                        try:
                            result = evaluation.run(patch, step=0)
                        finally:
                            evaluation.conditions = base
                        frames.append(_records(result.table, spec.success_metric, patch_id=patch_id,
                                               model_id=model_id, **{condition: value}))
            if not frames:
                continue
            curve = robustness_curve(pd.concat(frames, ignore_index=True), condition, seed=ctx.seed)
            path = ctx.fm.construct_saving_path(obj=curve, key=TRANSFER_KEY, file_name=f"robustness_{condition}.csv")
            curve.to_csv(path, index=False)
            for task in ctx.task_list:
                ctx.get_struct(task).paths[f"robustness_{condition}"] = path
            out[condition] = str(path)
        return out
