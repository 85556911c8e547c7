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

import numpy as np
import torch

from pandemonium.attack.presets import AttackConfigError
from pandemonium.attack.spec import AttackSpec
from pandemonium.attack.splits import REPORT_SPLIT
from pandemonium.modes.steps import EVAL_SUMMARY_KEY, EXAMPLES_KEY
from pandemonium.modes.steps.context import ModeContext
from pandemonium.modes.steps.models import ModelSource
from pandemonium.plain import to_plain
from pandemonium.runs.provenance import artifact_id

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    """One headline figure of an evaluation: its label, its summary key (also its MLflow metric name)
    and its value with the interval from the summary (a bootstrap over scenes)."""

    label: str
    key: str
    value: float
    ci_low: float
    ci_high: float


#: the figures the CLI, the report and MLflow all show per task: (label, suffix of the summary key)
HEADLINE_FIGURES = (("patched", ""), ("control (no patch)", "_control"), ("random patch", "_random"),
                    ("patched - random", "_diff_vs_random"))


def headline_figures(summary: Mapping[str, Any], metric: str | None = None) -> list[Figure]:
    """The headline figures of an evaluation summary (:data:`HEADLINE_FIGURES` of rate ``metric``,
    default ``summary["metric"]``), read from the scene-level summary, never recomputed.

    >>> s = {"metric": "r", "r": 0.8, "r_ci_low": 0.7, "r_ci_high": 0.9}
    >>> [(f.label, f.value) for f in headline_figures(s)]
    [('patched', 0.8)]
    """
    from pandemonium.plain import as_float

    metric = str(metric or summary["metric"])
    out = []
    for label, suffix in HEADLINE_FIGURES:
        key = f"{metric}{suffix}"
        if key in summary:
            out.append(Figure(label, key, as_float(summary[key]), as_float(summary.get(f"{key}_ci_low")),
                              as_float(summary.get(f"{key}_ci_high"))))
    return out


def format_figure(figure: Figure, digits: int = 3) -> str:
    """``0.812 [0.751, 0.866]``: how the CLI and the report write a figure."""
    return f"{figure.value:.{digits}f} [{figure.ci_low:.{digits}f}, {figure.ci_high:.{digits}f}]"


def environment_record(seed: int, device: Any) -> dict[str, Any]:
    """What a figure was computed with: pandemonium and torch versions, git commit (if the package runs
    from a checkout), device, CPU threads and seed."""
    import subprocess

    import pandemonium

    commit = ""
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(pandemonium.__file__).parent,
                               capture_output=True, text=True, timeout=5, check=False)
        commit = found.stdout.strip() if found.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):  # no git: the record says so by an empty commit
        commit = ""
    return {"pandemonium_version": getattr(pandemonium, "__version__", "unknown"), "git_commit": commit or "unknown",
            "torch_version": torch.__version__, "device": str(device), "threads": int(torch.get_num_threads()),
            "seed": int(seed)}


@dataclass
class StoredEvaluation:
    """Evaluation of one stored patch on one task: the table, summary, headline rate and examples.

    ``rate`` and ``ci`` are the summary's ``summary[metric]`` and its interval (scene bootstrap).
    """

    table: Any
    summary: dict[str, Any]
    metric: str
    rate: float
    ci: tuple[float, float]
    examples: dict[str, Any]
    patch_area_fraction: float
    split: str = REPORT_SPLIT


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


def detection_map50(evaluation: Any, patch: Any, scenes: Any = None) -> dict[str, float]:
    """mAP@0.5 with and without the patch over the evaluation's fixed conditions (detections kept
    from score 0.01, as for a model's own mAP; faster-coco-eval), with percentile intervals from a
    bootstrap over ``scenes`` (one id per row, the evaluation table's ``scene_id``) and the paired
    difference patched - no patch (:mod:`pandemonium.attack.success.average_precision`)."""
    from pandemonium.attack.rows import expand_patch
    from pandemonium.attack.statistics import StatisticsError
    from pandemonium.attack.success.average_precision import ap50_matches, map50_intervals, weighted_map50
    from pandemonium.attack.success.detection import DetectionSuccess, map50

    decoder = DetectionSuccess(score_threshold=0.01, iou_threshold=evaluation.iou_threshold)
    dets: dict[str, list[Any]] = {"patch": [], "control": []}
    gt_boxes: list[Any] = []
    gt_labels: list[Any] = []
    with torch.no_grad():
        for b, params in zip(evaluation.batch_sizes, evaluation.draw(patch)):
            x = expand_patch(patch, b)
            y_p, kw = evaluation.pipeline(x, evaluate=True, params=params)
            y_c, _ = evaluation.pipeline(x, evaluate=True, control=True, params=params)
            dets["patch"] += decoder.detections(y_p)
            dets["control"] += decoder.detections(y_c)
            targets = kw.get("targets") or {}
            gt_boxes += list(targets["boxes"])
            gt_labels += list(targets["labels"])
    out = {"map50": map50(dets["patch"], gt_boxes, gt_labels),
           "map50_control": map50(dets["control"], gt_boxes, gt_labels)}
    out["map50_diff_vs_control"] = out["map50"] - out["map50_control"]
    if scenes is not None and len(scenes) != len(gt_boxes):
        raise StatisticsError(f"mAP@0.5 interval: {len(scenes)} scene ids for {len(gt_boxes)} evaluated images")
    matches = {arm: ap50_matches(dets[arm], gt_boxes, gt_labels) for arm in dets}
    ones = np.ones((1, len(gt_boxes)))
    agree = all(abs(float(weighted_map50(matches[arm], ones)[0]) - out[key]) <= 1e-6
                for arm, key in (("patch", "map50"), ("control", "map50_control")))
    if not agree:  # e.g. degenerate boxes, which COCO scores its own way: no interval rather than a wrong one
        log.warning("mAP@0.5: the resampling re-implementation disagrees with faster-coco-eval; no interval")
        return out
    for key, interval in map50_intervals(matches["patch"], matches["control"], scenes, seed=evaluation.seed).items():
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = interval.ci_low, interval.ci_high
    return out


def informative_rows(table: Any, metric: str, n: int) -> list[int]:
    """Up to ``n`` table rows worth showing: rows the metric scores (trials > 0: for a targeted rate,
    true class != target; for an untargeted one, control correct), successes and failures both
    (half each where there are enough), in table order.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"r_hits": [0, 1, 0, 1, 1], "r_trials": [0, 1, 1, 1, 1]})
    >>> informative_rows(t, "r", 2)
    [1, 2]
    """
    import numpy as np

    hits = table[f"{metric}_hits"].to_numpy(dtype=float)
    trials = table[f"{metric}_trials"].to_numpy(dtype=float)
    scored = np.flatnonzero(trials > 0)
    wins = [int(i) for i in scored if hits[i] > 0]
    losses = [int(i) for i in scored if hits[i] <= 0]
    take_wins = min(len(wins), max(n - len(losses), (n + 1) // 2))
    chosen = wins[:take_wins] + losses[: n - take_wins]
    return sorted(chosen)


def evaluation_size(ctx: ModeContext, spec: AttackSpec) -> tuple[int, int]:
    """``(num_eval, batch_size)`` of a stored evaluation: the mode's ``num_eval`` / ``batch_size`` when
    set, else the attack's own. The stored evaluation, the transfer matrix and the curves all use it,
    so a patch on its own model gets the same conditions, value and interval in each."""
    mode = (to_plain(ctx.cfg.get("mode")) or {}) if hasattr(ctx.cfg, "get") else {}
    num_eval = mode.get("num_eval") if mode.get("num_eval") is not None else spec.evaluation.num_eval
    batch_size = mode.get("batch_size") if mode.get("batch_size") is not None else spec.evaluation.batch_size
    return int(num_eval), int(batch_size)


def evaluate_stored_patch(ctx: ModeContext, struct: Any, model: Any, spec: AttackSpec,
                          patch_path: Path) -> StoredEvaluation:
    """Fixed-condition evaluation (conditions drawn once from the run seed) of a stored patch on the
    held-out test split, judged by the goal it was fitted for on this task. The headline rate and its
    interval are the summary's (a bootstrap over scenes), as everywhere else."""
    from pandemonium.attack.evaluation import FixedEvaluation
    from pandemonium.attack.rows import rows_to_params
    from pandemonium.plain import as_float

    payload = load_patch(patch_path)
    spec = spec.for_patch(payload)
    patch = payload["patch"].float()
    if patch.shape[0] != struct.channels:
        raise AttackConfigError(
            f"patch {artifact_id(patch_path)} has {patch.shape[0]} channels but task {struct.name!r} images have "
            f"{struct.channels}"
        )
    seed = ctx.seed
    pipeline = spec.build_pipeline(model, struct, ctx.data_dir, seed, ctx.fold, eval_split=REPORT_SPLIT)
    pipeline.to(ctx.device)
    metric = spec.success_metric
    num_eval, batch_size = evaluation_size(ctx, spec)
    evaluation = FixedEvaluation(pipeline, spec.build_loss(), dict(spec.weights), num_eval=num_eval,
                                 batch_size=batch_size, seed=seed, target_class=spec.target_class,
                                 split=REPORT_SPLIT, task_type=spec.task_type)
    patch = patch.to(ctx.device)
    result = evaluation.run(patch, step=0)
    summary = to_plain(result.summary)
    if metric not in summary:
        rates = sorted(k[: -len("_n_scenes")] for k in summary if k.endswith("_n_scenes"))
        raise AttackConfigError(f"task {struct.name!r}: the evaluation has no rate {metric!r} (preset {spec.name!r}); "
                                f"rates: {', '.join(rates)}")
    if spec.task_type == "detection":
        summary.update(detection_map50(evaluation, patch, scenes=result.table["scene_id"].to_numpy()))
    rows = informative_rows(result.table, metric, ctx.num_examples)
    if rows:
        picked = result.table.iloc[rows]
        picked.attrs = dict(result.table.attrs)
        params = rows_to_params(picked, device=torch.device(ctx.device))
        outcomes = ["success" if h > 0 else "failure" for h in picked[f"{metric}_hits"]]
    else:  # nothing the metric scores (e.g. no image the control gets right): the first conditions
        params, outcomes = evaluation.conditions[0], []
    examples = collect_examples(pipeline, patch, params, struct, ctx.num_examples)
    examples["outcome"] = outcomes
    coverage = examples.pop("patch_coverage", None)
    area = float(coverage) if coverage is not None else float("nan")
    # an undefined rate (nothing to attack) is stored as null and read back as NaN
    return StoredEvaluation(result.table, summary, metric, as_float(summary[metric]),
                            (as_float(summary.get(f"{metric}_ci_low")), as_float(summary.get(f"{metric}_ci_high"))),
                            examples, area, split=result.split)


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
        model, meta = self.models.load(struct)
        spec = ctx.spec(struct)
        evaluation = evaluate_stored_patch(ctx, struct, model, spec, patch_path)
        table_path = ctx.fm.construct_saving_path(obj=evaluation.table, key="eval_tables", task_name=task_name,
                                                  file_name="eval.parquet")
        table_path = save_table(evaluation.table, table_path)
        extra = dict((meta or {}).get("extra") or {})
        # `rate` is the summary's own `<metric>` value, not a second computation
        summary = {**evaluation.summary, "task": task_name, "task_type": spec.task_type,
                   "metric": evaluation.metric, "rate": evaluation.rate,
                   "rate_ci_low": evaluation.ci[0], "rate_ci_high": evaluation.ci[1], "split": evaluation.split,
                   "patch_id": artifact_id(patch_path), "model_id": artifact_id(struct.paths.get("models")),
                   "patch_area_fraction": evaluation.patch_area_fraction, "preset": spec.name,
                   "model_stopped_by_time_cap": bool(extra.get("stopped_by_time_cap", False)),
                   "environment": environment_record(ctx.seed, ctx.device)}
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
        for line in evaluation_lines(summary):
            log.info("%s", line)
        return {"metric": evaluation.metric, "rate": evaluation.rate, "ci": list(evaluation.ci)}


def split_counts(summary: Mapping[str, Any]) -> str:
    """``test split (56 scenes, 128 rows)``: where an evaluation's figures come from, counts as integers."""
    from pandemonium.plain import as_float

    def count(key: str) -> str:
        value = as_float(summary.get(key))
        return str(int(value)) if value == value else "?"

    text = f"{summary.get('split', '?')} split ({count('n_scenes')} scenes, {count('n_rows')} rows"
    metric = summary.get("metric")
    scored = (count(f"{metric}_n_rows"), count(f"{metric}_n_scenes"))
    if metric and scored != (count("n_rows"), count("n_scenes")) and "?" not in scored:
        # a rate only scores the rows it can (e.g. true class != target): say what it stands on
        text += f"; {metric} scores {scored[0]} rows from {scored[1]} scenes"
    return text + ")"


def evaluation_lines(summary: Mapping[str, Any]) -> list[str]:
    """The CLI's lines of one task's evaluation: split and counts, then each headline figure.

    >>> s = {"task": "t", "metric": "r", "split": "test", "n_scenes": 3.0, "n_rows": 4.0,
    ...      "r": 0.5, "r_ci_low": 0.1, "r_ci_high": 0.9}
    >>> evaluation_lines(s)
    ['t: r on the test split (3 scenes, 4 rows)', '  patched                0.500 [0.100, 0.900]']
    """
    lines = [f"{summary.get('task')}: {summary.get('metric')} on the {split_counts(summary)}"]
    lines += [f"  {figure.label:<22} {format_figure(figure)}" for figure in headline_figures(summary)]
    return lines


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


def stored_evaluation_lines(ctx: ModeContext) -> list[str]:
    """:func:`evaluation_lines` of every task of the run with a stored evaluation (what `attack` prints)."""
    lines: list[str] = []
    for task in ctx.task_list:
        path = ctx.get_struct(task).paths.get(EVAL_SUMMARY_KEY)
        if path and Path(path).is_file():
            lines += evaluation_lines(json.loads(Path(path).read_text()))
    return lines


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
