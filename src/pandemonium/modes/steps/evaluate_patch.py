"""Fixed-condition evaluation of a stored patch on one task, with examples for the report.

:func:`evaluate_stored_patch` evaluates; :class:`PatchEvaluation` is the ``evaluate`` step of the
``attack`` mode that also stores the table, the summary and the examples.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pandemonium.attack.spec import AttackConfigError, AttackSpec
from pandemonium.modes.steps import EVAL_SUMMARY_KEY, EXAMPLES_KEY
from pandemonium.modes.steps.context import ModeContext
from pandemonium.modes.steps.models import ModelSource
from pandemonium.plain import to_plain
from pandemonium.runs.provenance import artifact_id

log = logging.getLogger(__name__)


@dataclass
class StoredEvaluation:
    """Evaluation of one stored patch on one task: the table, summary, headline rate and examples."""

    table: Any
    summary: dict[str, Any]
    metric: str
    rate: float
    ci: tuple[float, float]
    examples: dict[str, Any]
    patch_area_fraction: float


def load_patch(path: str | Path) -> dict[str, Any]:
    """A stored patch file (``patches_*.pt``); errors name the file."""

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
    """Per-image predictions in a drawable form (see :class:`pandemonium.report.html.Prediction`)."""

    from pandemonium.tasktypes import task_type_spec

    decode = task_type_spec(task_type).report_predictions
    if decode is None:  # a task type that draws nothing: one empty prediction per image
        return [{} for _ in range(len(outputs))]
    return decode(outputs, class_names, threshold)


def evaluate_stored_patch(ctx: ModeContext, struct: Any, model: Any, spec: AttackSpec,
                          patch_path: Path) -> StoredEvaluation:
    """Fixed-condition evaluation (conditions drawn once from the run seed) of a stored patch, judged
    by the goal it was fitted for on this task."""
    from pandemonium.attack.evaluation import FixedEvaluation
    from pandemonium.report.transfer import success_from_eval_table, summarise_rate

    payload = load_patch(patch_path)
    spec = spec.for_patch(payload)
    patch = payload["patch"].float()
    if patch.shape[0] != struct.channels:
        raise AttackConfigError(
            f"patch {artifact_id(patch_path)} has {patch.shape[0]} channels but task {struct.name!r} images have "
            f"{struct.channels}"
        )
    seed = ctx.seed
    pipeline = spec.build_pipeline(model, struct, ctx.data_dir, seed, ctx.fold)
    pipeline.to(ctx.device)
    metric = spec.success_metric
    evaluation = FixedEvaluation(pipeline, spec.build_loss(), dict(spec.weights), num_eval=spec.evaluation.num_eval,
                                 batch_size=spec.evaluation.batch_size, seed=seed, target_class=spec.target_class)
    patch = patch.to(ctx.device)
    result = evaluation.run(patch, step=0)
    success, weight = success_from_eval_table(result.table, metric)
    rate = summarise_rate(success, weight, seed=seed)
    examples = collect_examples(pipeline, patch, evaluation.conditions[0], struct, ctx.num_examples)
    coverage = examples.pop("patch_coverage", None)
    area = float(coverage) if coverage is not None else float("nan")
    return StoredEvaluation(result.table, to_plain(result.summary), metric, rate.rate, (rate.ci_low, rate.ci_high),
                            examples, area)


class PatchEvaluation:
    """The ``evaluate`` step: evaluate the task's patch on its model and store table, summary and examples."""

    def __init__(self, ctx: ModeContext, models: ModelSource) -> None:
        self.ctx = ctx
        self.models = models

    def evaluate_patch(self, task_name: str) -> dict[str, Any]:
        """Fixed-condition evaluation of the task's patch on the task's model and held-out images."""
        from pandemonium.attack.evaluation import save_table

        ctx = self.ctx
        struct = ctx.get_struct(task_name)
        patch_path = ctx.patch_path(struct)
        if patch_path is None:
            raise AttackConfigError(f"task {task_name!r}: no patch to evaluate (run the `attack` subroutine)")
        struct.paths["patches"] = patch_path
        model, _meta = self.models.load(struct)
        spec = ctx.spec(struct)
        evaluation = evaluate_stored_patch(ctx, struct, model, spec, patch_path)
        table_path = ctx.fm.construct_saving_path(obj=evaluation.table, key="eval_tables", task_name=task_name,
                                                  file_name="eval.parquet")
        table_path = save_table(evaluation.table, table_path)
        summary = {**evaluation.summary, "task": task_name, "task_type": spec.task_type,
                   "metric": evaluation.metric, "rate": evaluation.rate,
                   "rate_ci_low": evaluation.ci[0], "rate_ci_high": evaluation.ci[1],
                   "patch_id": artifact_id(patch_path), "model_id": artifact_id(struct.paths.get("models")),
                   "patch_area_fraction": evaluation.patch_area_fraction, "preset": spec.name}
        summary_path = ctx.fm.construct_saving_path(obj=summary, key=EVAL_SUMMARY_KEY, task_name=task_name,
                                                    file_name="summary.json")
        summary_path.write_text(json.dumps(to_plain(summary), indent=1))
        examples_path = ctx.fm.construct_saving_path(obj=None, key=EXAMPLES_KEY, task_name=task_name,
                                                     file_name="examples.pt")
        torch.save(evaluation.examples, examples_path)
        struct.paths["eval_tables"] = table_path
        struct.paths[EVAL_SUMMARY_KEY] = summary_path
        struct.paths[EXAMPLES_KEY] = examples_path
        if ctx.tracking is not None:
            ctx.tracking.log_evaluation(task_name, summary)
        ctx.results.setdefault("evaluations", {})[task_name] = summary
        return {"metric": evaluation.metric, "rate": evaluation.rate, "ci": list(evaluation.ci)}


def collect_examples(pipeline: Any, patch: Any, params: Mapping[str, Any], struct: Any, n: int) -> dict[str, Any]:
    """Images the model saw with and without the patch (same conditions), its predictions, the truth."""

    from pandemonium.attack.evaluation import pipeline_stages

    batch = len(next(iter(params.values()))) if params else 1
    n = max(1, min(int(n), batch))
    captured: list[Any] = []
    last = pipeline_stages(pipeline)[-1]

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured.append(args[0] if args else kwargs.get("x"))

    handle = last.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            x = patch[None].expand(batch, *patch.shape)  # one (C, h, w) patch for every sample
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
    from pandemonium.tasktypes import task_type_spec

    caption = task_type_spec(task_type).report_truth
    truth: list[str] = caption(targets, struct.class_names, n) if caption is not None else []
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


def evaluation_headline(ctx: ModeContext) -> dict[str, float]:
    """``{"<task>/<metric>": rate}`` of every evaluated task of the run (from the stored summaries)."""
    from pandemonium.plain import as_float

    out: dict[str, float] = {}
    for task in ctx.task_list:
        path = ctx.get_struct(task).paths.get(EVAL_SUMMARY_KEY)
        if path and Path(path).is_file():
            summary = json.loads(Path(path).read_text())
            out[f"{task}/{summary['metric']}"] = as_float(summary.get("rate"))
    return out
