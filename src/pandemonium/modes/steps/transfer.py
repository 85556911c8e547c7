"""The ``transfer`` and ``robustness`` steps: every stored patch against every stored model, under fixed
conditions drawn once from the seed, on the held-out test split (FileManager key ``transfer``).

Every figure is read from one :class:`~pandemonium.attack.evaluation.FixedEvaluation` summary (rates
and intervals from a bootstrap over scenes), so a patch on its own model shows exactly the value and
interval of its stored evaluation (:mod:`pandemonium.modes.steps.evaluate_patch`).

- ``transfer.csv``: the transfer matrix in long form (patch, model, rate with its 95% CI, control,
  random-patch rate, the paired difference patched - random, counts) and
  ``transfer_records.parquet``: the per-row success behind it, with each row's ``scene_id``;
- ``robustness_<condition>.csv``: the same figures per value of one swept condition, everything else
  fixed, for the patch, no patch (``control``) and a random patch (``random``):

  - ``scale``: patch side / image side (square root of the area ratio for non-square shapes); for an
    implanter that scales the patch to a target box the ratio is reached per row and capped at the
    box (``at_size`` is the share of rows that reached it);
  - ``angle``: viewing angle in degrees (a tilt of the scene about the vertical axis after implanting);
  - ``brightness``: a factor on the whole image (1 = unchanged);
  - ``blur``: the sigma in pixels of a Gaussian blur of the whole image (0 = unchanged);
  - ``jpeg``: the JPEG quality (Pillow, per image; evaluation only, no gradient).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pandemonium.attack.presets import SCALED_IMPLANTERS, AttackConfigError
from pandemonium.attack.spec import EvaluationPlan
from pandemonium.attack.splits import REPORT_SPLIT
from pandemonium.models.memo import MemoizedModel
from pandemonium.modes.steps import UNIVERSAL_TASK
from pandemonium.modes.steps.context import ModeContext
from pandemonium.modes.steps.evaluate_patch import evaluation_size, load_patch
from pandemonium.modes.steps.image_conditions import CURVE_CONDITIONS, IMAGE_CONDITIONS, image_condition
from pandemonium.modes.steps.models import ModelSource
from pandemonium.report.transfer import success_from_eval_table
from pandemonium.runs.provenance import artifact_id

log = logging.getLogger(__name__)

__all__ = ["TRANSFER_KEY", "Transfer", "figures_record", "override_param", "read_summary", "transfer_headline",
           "transfer_lines"]

TRANSFER_KEY = "transfer"


# ------------------------------------------------------------------ conditions and records
def override_param(conditions: list[dict[str, Any]], stage: int, name: str, fn: Any,
                   with_batch: bool = False) -> list[dict[str, Any]]:
    """A copy of recorded conditions with the param ``name`` of the stage at position ``stage`` (for
    every patch key: ``"<pos>_<Stage>/<name>"`` or ``"<pos>_<Stage>/<key>.<name>"``) replaced by
    ``fn(old)`` (``fn(old, batch_params)`` with ``with_batch``)."""
    pattern = re.compile(rf"^{int(stage)}_[^/]+/(?:.+\.)?{re.escape(name)}$")
    out = []
    for batch in conditions:
        new = dict(batch)
        hit = False
        for key, value in batch.items():
            if pattern.match(key):
                arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                replaced = np.asarray(fn(arr, batch) if with_batch else fn(arr), dtype=arr.dtype)
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


def transfer_lines(ctx: ModeContext) -> list[str]:
    """What `evaluate` prints: per patch x model pair of the newest transfer table, the patched rate,
    the control and random-patch rates and the paired difference, each with its interval."""
    path = next((ctx.get_struct(t).paths.get(TRANSFER_KEY) for t in ctx.task_list
                 if ctx.get_struct(t).paths.get(TRANSFER_KEY)), None)
    if not path or not Path(path).is_file():
        return []
    lines = []
    for row in pd.read_csv(path).to_dict("records"):
        def fig(col: str, low: str, high: str, r: dict[str, Any] = row) -> str:
            return f"{r[col]:.3f} [{r[low]:.3f}, {r[high]:.3f}]"
        lines.append(f"{row['patch_id']} -> {row['model_id']}: {row['metric']} on the {row.get('split', '?')} split "
                     f"({int(row['n_scenes'])} scenes, {int(row['n'])} rows)")
        lines.append(f"  patched {fig('rate', 'ci_low', 'ci_high')}, control {fig('control', 'control_ci_low', 'control_ci_high')}, "
                     f"random patch {fig('random', 'random_ci_low', 'random_ci_high')}, "
                     f"patched - random {fig('diff_vs_random', 'diff_vs_random_ci_low', 'diff_vs_random_ci_high')}")
    return lines


#: the columns of a transfer / robustness row taken from an evaluation summary: column -> key suffix
FIGURE_COLUMNS = {"rate": "", "control": "_control", "random": "_random", "diff_vs_random": "_diff_vs_random"}


def figures_record(summary: Mapping[str, Any], metric: str) -> dict[str, float]:
    """One transfer / robustness row from an evaluation summary: ``rate``, ``control``, ``random``,
    ``diff_vs_random`` with ``_ci_low`` / ``_ci_high`` (``ci_low`` / ``ci_high`` for the rate), and
    the counts ``n`` (rows), ``n_scenes``, ``trials``. Values are the summary's, never recomputed."""
    from pandemonium.plain import as_float

    if metric not in summary:
        raise AttackConfigError(f"evaluation summary has no rate {metric!r}")
    out: dict[str, float] = {}
    for column, suffix in FIGURE_COLUMNS.items():
        key = f"{metric}{suffix}"
        low, high = ("ci_low", "ci_high") if column == "rate" else (f"{column}_ci_low", f"{column}_ci_high")
        out[column] = as_float(summary.get(key))
        out[low], out[high] = as_float(summary.get(f"{key}_ci_low")), as_float(summary.get(f"{key}_ci_high"))
    out["n"] = int(as_float(summary.get(f"{metric}_n_rows", 0)))
    out["n_scenes"] = int(as_float(summary.get(f"{metric}_n_scenes", 0)))
    out["trials"] = as_float(summary.get(f"{metric}_trials"))
    return out


def _records(table: pd.DataFrame, success_column: str, **ids: Any) -> pd.DataFrame:
    success, weight = success_from_eval_table(table, success_column)
    frame = pd.DataFrame({"sample": np.arange(len(table)), "scene_id": table["scene_id"].to_numpy(),
                          "success": success, "weight": weight})
    for key, value in ids.items():
        frame[key] = value
    return frame


def _side_scale(stage: Any, patch_hw: tuple[int, int], ratio: float) -> Callable[..., np.ndarray]:
    """The implanter's ``scale`` param that makes the patch side ``ratio`` x the image side."""
    height, width = stage.bank.image_size
    h, w = patch_hw
    target = ratio * math.sqrt(height * width)  # the patch side asked for, in pixels
    if type(stage).__name__ in SCALED_IMPLANTERS:  # scale multiplies the patch's pixel size
        return lambda old, _batch: np.full_like(old, target / math.sqrt(h * w))

    def box_scale(old: np.ndarray, batch: Mapping[str, Any]) -> np.ndarray:
        # scale is the share of the largest size that fits the target box: reach the side, capped at the box
        index = next(v for k, v in batch.items() if k.endswith("/image_index"))
        choice = next(v for k, v in batch.items() if k.endswith("box_choice"))
        box = stage.bank.select("boxes", torch.as_tensor(index).cpu(), torch.as_tensor(choice).cpu()).numpy()
        fit = np.minimum((box[:, 2] - box[:, 0]) / w, (box[:, 3] - box[:, 1]) / h)
        return np.minimum(target / np.sqrt(h * w) / np.maximum(fit, 1e-9), 1.0).astype(old.dtype)

    return box_scale


def _at_size(conditions: list[dict[str, Any]], pipeline: Any, implanter: int) -> float:
    """Share of rows whose patch has the asked side: all for a pixel-scale implanter, the rows whose
    box scale was not capped at the target box otherwise."""
    from pandemonium.attack.rows import pipeline_stages

    if type(pipeline_stages(pipeline)[implanter]).__name__ in SCALED_IMPLANTERS:
        return 1.0
    pattern = re.compile(rf"^{int(implanter)}_[^/]+/(?:.+\.)?scale$")
    scales = [torch.as_tensor(v).float().reshape(-1) for c in conditions for k, v in c.items() if pattern.match(k)]
    return float((torch.cat(scales) < 1.0 - 1e-6).float().mean()) if scales else float("nan")


class Transfer:
    """Transfer matrix and robustness curves of the stored patches on the stored models (``plan``:
    the swept conditions of the mode config, ``mode.scales``, ``mode.brightness``, ...)."""

    def __init__(self, ctx: ModeContext, models: ModelSource, plan: EvaluationPlan) -> None:
        self.ctx = ctx
        self.models = models
        self.plan = plan
        # built pipelines by (model task, tilt): the transfer matrix and every curve evaluate through the
        # same few, and building one loads its model and its scene bank (each evaluation reseeds every
        # stage generator and replays its own conditions, so sharing leaves the figures as they were)
        self._pipelines: dict[tuple[str, float | None], tuple[Any, Any, Any]] = {}
        # one victim per model task for all its pipelines, answering a repeated input from memory (the
        # control arm of every scale, brightness 1, blur 0, the transfer diagonal again in the curves)
        self._victims: dict[str, MemoizedModel] = {}
        # the base conditions drawn per (model task, tilt, patch): a draw depends on nothing else
        self._drawn: dict[tuple[str, float | None, str], list[dict[str, Any]]] = {}

    # ------------------------------------------------------------------ evaluation of one pair
    def pipeline(self, model_task: str, tilt: float | None = None) -> tuple[Any, Any, Any]:
        """(pipeline, struct, spec) of the model of ``model_task`` evaluating on the test split;
        ``tilt``: a viewing-angle stage (up to ``tilt`` degrees) right after the implanter."""
        key = (model_task, None if tilt is None else float(tilt))
        if key not in self._pipelines:
            self._pipelines[key] = self._build_pipeline(model_task, tilt)
        return self._pipelines[key]

    def _build_pipeline(self, model_task: str, tilt: float | None) -> tuple[Any, Any, Any]:
        ctx = self.ctx
        struct = ctx.get_struct(model_task)
        if model_task not in self._victims:
            self._victims[model_task] = MemoizedModel(self.models.load(struct)[0])
        model = self._victims[model_task]
        spec = ctx.spec(struct)
        # the viewing angle tilts the whole scene (patch included) right after implanting; its sampled
        # angle is overridden per curve point
        extra = [] if tilt is None else [{"_target_": "ViewingAngleTilt", "max_tilt": max(1.0, float(tilt)), "p": 1.0,
                                          "padding_mode": "border"}]
        pipeline = spec.build_pipeline(model, struct, ctx.data_dir, ctx.seed, ctx.fold, after_implanter=extra,
                                       eval_split=REPORT_SPLIT)
        pipeline.to(ctx.device)
        return pipeline, struct, spec

    def evaluation(self, pipeline: Any, spec: Any, patch_path: Path) -> Any:
        """A fresh FixedEvaluation (conditions drawn with the patch evaluated, as the stored evaluation
        draws them), aimed at the class the patch was fitted for on this task, if any. It scores the
        random-patch baseline and summarises the task's success rate only: the rest of a full
        evaluation (grey patch, loss means) appears in no transfer or curve figure."""
        from pandemonium.attack.evaluation import FixedEvaluation

        num_eval, batch_size = evaluation_size(self.ctx, spec)
        aimed = spec.for_patch(load_patch(patch_path))
        return FixedEvaluation(pipeline, aimed.build_loss(), dict(spec.weights), num_eval=num_eval,
                               batch_size=batch_size, seed=self.ctx.seed, target_class=aimed.target_class,
                               split=REPORT_SPLIT, task_type=spec.task_type, baseline_arms=("random",),
                               rates=(spec.success_metric,))

    def base_conditions(self, evaluation: Any, model_task: str, tilt: float | None, path: Path,
                        patch: torch.Tensor) -> list[dict[str, Any]]:
        """The conditions ``evaluation`` draws for ``patch`` (drawn once per model task, tilt and patch;
        a later evaluation of the same triple replays the same list)."""
        key = (model_task, None if tilt is None else float(tilt), str(path))
        if key in self._drawn:
            evaluation.conditions = self._drawn[key]
        else:
            self._drawn[key] = evaluation.draw(patch)
        return self._drawn[key]

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
        """Transfer matrix: every stored patch x every stored model, patched vs control vs random patch."""
        ctx = self.ctx
        patches = ctx.stored_patches()
        rows, frames = [], []
        for model_task in ctx.task_list:
            pipeline, struct, spec = self.pipeline(model_task)
            model_id = artifact_id(struct.paths.get("models"))
            metric = spec.success_metric
            for patch_id, path in patches.items():
                patch = self._patch_tensor(path, struct)
                if patch is None:
                    continue
                evaluation = self.evaluation(pipeline, spec, path)
                self.base_conditions(evaluation, model_task, None, path, patch)
                result = evaluation.run(patch, step=0)
                ids = {"patch_id": patch_id, "model_id": model_id, "patch_task": path.parent.name,
                       "model_task": model_task}
                rows.append({**ids, **figures_record(result.summary, metric), "metric": metric, "split": result.split})
                frames.append(_records(result.table, metric, **ids, metric=metric))
        if not rows:
            raise AttackConfigError("evaluate: no patch fits any model of task_list (channels / image size)")
        records = pd.concat(frames, ignore_index=True)
        table = pd.DataFrame(rows)
        records_path = ctx.fm.construct_saving_path(obj=records, key=TRANSFER_KEY, file_name="transfer_records.parquet")
        records.to_parquet(records_path, index=False)
        table_path = ctx.fm.construct_saving_path(obj=table, key=TRANSFER_KEY, file_name="transfer.csv")
        table.to_csv(table_path, index=False)
        for task in ctx.task_list:
            ctx.get_struct(task).paths[TRANSFER_KEY] = table_path
        log.info("transfer matrix (%d patches x %d models) -> %s", len(patches), len(ctx.task_list), table_path)
        return {"transfer": str(table_path), "pairs": len(table)}

    def _curve_conditions(self, evaluation: Any, base: list[dict[str, Any]], condition: str, value: float,
                          implanter: int, spec: Any, patch: torch.Tensor) -> list[dict[str, Any]]:
        from pandemonium.attack.rows import pipeline_stages

        if condition in IMAGE_CONDITIONS:
            return base
        try:
            if condition == "scale":
                stage = pipeline_stages(evaluation.pipeline)[implanter]
                return override_param(base, implanter, "scale",
                                      _side_scale(stage, (int(patch.shape[-2]), int(patch.shape[-1])), value),
                                      with_batch=True)
            # the tilt stage right after the implanter
            conditions = override_param(base, implanter + 1, "tilt", lambda a, v=value: np.full_like(a, v))
            return override_param(conditions, implanter + 1, "axis_angle", lambda a: np.full_like(a, 90.0))
        except KeyError as err:
            raise AttackConfigError(
                f"robustness over {condition}: the evaluation pipeline of task {spec.task!r} samples no parameter "
                f"{err.args[0]!r} (preset {spec.name!r}; the implanter must sample a scale)"
            ) from None

    def _curve_point(self, pipeline: Any, spec: Any, path: Path, patch: torch.Tensor, base: list[dict[str, Any]],
                     condition: str, value: float, implanter: int) -> dict[str, Any]:
        evaluation = self.evaluation(pipeline, spec, path)
        evaluation.conditions = self._curve_conditions(evaluation, base, condition, value, implanter, spec, patch)
        if condition in IMAGE_CONDITIONS:
            with image_condition(pipeline, IMAGE_CONDITIONS[condition], value):
                result = evaluation.run(patch, step=0)
        else:
            result = evaluation.run(patch, step=0)
        record = figures_record(result.summary, spec.success_metric)
        if condition == "scale":
            record["at_size"] = _at_size(evaluation.conditions, pipeline, implanter)
        return record

    def robustness(self) -> dict[str, Any]:
        """Rate (patch, no patch, random patch) per value of each swept condition, for the diagonal (or
        all) patch x model pairs."""
        ctx, plan = self.ctx, self.plan
        patches = ctx.stored_patches()
        out: dict[str, Any] = {}
        for condition in CURVE_CONDITIONS:
            values = getattr(plan, {"scale": "scales", "angle": "angles"}.get(condition, condition))
            if not values:
                continue
            rows = []
            for model_task in ctx.task_list:
                tilt = max(abs(v) for v in values) if condition == "angle" else None
                pipeline, struct, spec = self.pipeline(model_task, tilt=tilt)
                implanter = spec.implanter_index()
                model_id = artifact_id(struct.paths.get("models"))
                for patch_id, path in patches.items():
                    own = path.parent.name in (model_task, UNIVERSAL_TASK)
                    if plan.curve_pairs == "diagonal" and not own:
                        continue
                    patch = self._patch_tensor(path, struct)
                    if patch is None:
                        continue
                    base = self.base_conditions(self.evaluation(pipeline, spec, path), model_task, tilt, path, patch)
                    for value in values:
                        record = self._curve_point(pipeline, spec, path, patch, base, condition, value, implanter)
                        rows.append({"patch_id": patch_id, "model_id": model_id, condition: value, **record,
                                     "metric": spec.success_metric, "split": REPORT_SPLIT})
            if not rows:
                continue
            curve = pd.DataFrame(rows)
            path = ctx.fm.construct_saving_path(obj=curve, key=TRANSFER_KEY, file_name=f"robustness_{condition}.csv")
            curve.to_csv(path, index=False)
            for task in ctx.task_list:
                ctx.get_struct(task).paths[f"robustness_{condition}"] = path
            out[condition] = str(path)
        return out

