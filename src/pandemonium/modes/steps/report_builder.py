"""The ``report`` step: one self-contained HTML page from the stored results of a project.

Per task of ``task_list`` the newest patch, its fixed-condition evaluation (summary with CIs,
before/after examples with the model's predictions) and its optimisation curves; then the newest
transfer matrix and robustness curves of the project; then the command and the composed config.
Artifacts attached to the structs in this run win over older ones found in the project, so a run
that attacks and reports (the demo) reports exactly what it produced.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from pandemonium.attack.presets import AttackConfigError
from pandemonium.modes.steps import CURVES_KEY, EVAL_SUMMARY_KEY, EXAMPLES_KEY
from pandemonium.modes.steps.context import ModeContext
from pandemonium.modes.steps.evaluate_patch import headline_figures, load_patch, split_counts
from pandemonium.modes.steps.image_conditions import CURVE_CONDITIONS
from pandemonium.modes.steps.sweep import newest_sweep, read_sweep, study_reports, sweep_table
from pandemonium.modes.steps.transfer import TRANSFER_KEY, read_summary
from pandemonium.plain import as_float
from pandemonium.report.data import (
    ExamplePair,
    HeadlineFigure,
    Prediction,
    ReportData,
    TaskSection,
    read_table,
)
from pandemonium.report.html import write_report
from pandemonium.runs.provenance import artifact_id, command_line
from pandemonium.runs.warnings import read_warnings

log = logging.getLogger(__name__)

__all__ = ["REPORT_KEY", "ReportBuilder", "example_pairs", "summary_table"]

REPORT_KEY = "reports"
SUMMARY_SUFFIXES = ("_ci_low", "_ci_high", "_se", "_n")


def summary_table(summary: dict[str, Any]) -> pd.DataFrame:
    """``quantity, mean, ci_low, ci_high, n`` for every summarised column of an evaluation summary."""
    rows = []
    for key, value in summary.items():
        if f"{key}_ci_low" not in summary or isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            continue
        # JSON null is a mean over no samples (e.g. no detections to hide): shown as nan
        # counts are integers: a rate's rows (<rate>_n_rows), a mean's non-missing rows (<col>_n)
        n = as_float(summary.get(f"{key}_n", summary.get(f"{key}_n_rows")))
        rows.append({"quantity": key, "mean": as_float(value), "ci_low": as_float(summary.get(f"{key}_ci_low")),
                     "ci_high": as_float(summary.get(f"{key}_ci_high")), "n": int(n) if math.isfinite(n) else None})
    table = pd.DataFrame(rows, columns=["quantity", "mean", "ci_low", "ci_high", "n"])
    table["n"] = pd.Series([r["n"] for r in rows], dtype=object)  # ints, None where there is no count
    return table


def headline_cards(task: str, summary: dict[str, Any]) -> dict[str, HeadlineFigure]:
    """The task's headline cards: patched, control, random patch and patched - random, each with its
    interval, keyed ``<task>/<summary key>`` (the summary key is the MLflow metric name too)."""
    return {f"{task}/{f.key}": HeadlineFigure(f.value, f.ci_low, f.ci_high, f"{task} · {summary.get('metric')} · {f.label}")
            for f in headline_figures(summary)}


def environment_table(summary: dict[str, Any]) -> pd.DataFrame:
    """The environment record of an evaluation (versions, commit, device, threads, seed) as a table."""
    record = summary.get("environment") or {}
    return pd.DataFrame({"setting": list(record), "value": [str(v) for v in record.values()]})


def _prediction(entry: dict[str, Any] | None) -> Prediction:
    entry = dict(entry or {})
    return Prediction(label=entry.get("label"), score=entry.get("score"), boxes=entry.get("boxes"),
                      box_scores=entry.get("box_scores"), box_labels=entry.get("box_labels"),
                      mask=entry.get("mask"))


def example_pairs(examples: dict[str, Any], limit: int) -> list[ExamplePair]:
    """The stored examples of an evaluation (see ``attack.collect_examples``) as report pairs."""
    pairs = []
    before, after = examples.get("before"), examples.get("after")
    if before is None or after is None:
        return pairs
    truth = list(examples.get("truth") or [])
    outcome = list(examples.get("outcome") or [])
    for i in range(min(int(limit), len(before))):
        caption = truth[i] if i < len(truth) else ""
        if i < len(outcome):  # examples are chosen to show successes and failures of the attack
            caption = f"{caption} · attack {'succeeded' if outcome[i] == 'success' else 'failed'}".strip(" ·")
        pairs.append(ExamplePair(
            before=before[i], after=after[i],
            pred_before=_prediction((examples.get("pred_before") or [{}] * (i + 1))[i]),
            pred_after=_prediction((examples.get("pred_after") or [{}] * (i + 1))[i]),
            truth=caption,
        ))
    return pairs


class ReportBuilder:
    """The ``report`` step: one HTML page from what the run attached to the structs, else the newest
    artifacts of the project."""

    def __init__(self, ctx: ModeContext) -> None:
        self.ctx = ctx

    def task_section(self, task: str) -> TaskSection | None:
        ctx = self.ctx
        struct = ctx.get_struct(task)
        patch_path = ctx.patch_path(struct)
        if patch_path is None:
            log.warning("report: task %s has no patch; section skipped", task)
            return None
        owner = patch_path.parent.name
        payload = load_patch(patch_path)
        summary = read_summary(ctx.artifact(struct, EVAL_SUMMARY_KEY))
        examples_path = ctx.artifact(struct, EXAMPLES_KEY)
        examples = torch.load(examples_path, map_location="cpu", weights_only=False) if examples_path else {}
        curves_path = ctx.artifact(struct, CURVES_KEY, owner=owner)
        curves = read_table(curves_path) if curves_path else None
        metrics: dict[str, float] = {}
        if summary:
            metric = summary.get("metric", "rate")
            metrics = {metric: summary.get("rate"), f"{metric} CI low": summary.get("rate_ci_low"),
                       f"{metric} CI high": summary.get("rate_ci_high"),
                       "patch area / image area": summary.get("patch_area_fraction")}
            if "map50" in summary:  # corpus-level; its interval resamples scenes like every rate's
                for key, label in (("map50", "mAP@0.5 with patch"), ("map50_control", "mAP@0.5 without patch"),
                                   ("map50_diff_vs_control", "mAP@0.5 with - without patch")):
                    if key in summary:
                        metrics[label] = summary[key]
                        if f"{key}_ci_low" in summary:
                            metrics[f"{label} CI low"] = summary[f"{key}_ci_low"]
                            metrics[f"{label} CI high"] = summary[f"{key}_ci_high"]
            # an undefined rate (nothing to attack, e.g. a detector that finds nothing) shows as nan
            metrics = {k: as_float(v) for k, v in metrics.items()}
        patch_note = f"patch of run {payload['run_dir']}" if payload.get("run_dir") else ""
        if payload.get("command"):
            patch_note += f", made by `{payload['command']}`"
        if payload.get("universal"):
            patch_note = "universal patch (one patch for " + ", ".join(payload.get("tasks", [])) + "); " + patch_note
        fit = payload.get("summary") or {}
        if fit.get("method") == "blackbox":  # a query-only attack is judged with its cost
            patch_note += f"; black-box patch: {fit['queries']} queries to the model (budget {fit['query_budget']})"
        if summary:
            patch_note = f"Figures from the {split_counts(summary)}; 95% intervals from a bootstrap over scenes. " \
                         + patch_note
            if summary.get("model_stopped_by_time_cap"):
                patch_note += (" The model's training was stopped by the wall-clock cap: it is not reproducible "
                               "bit for bit.")
        tables = {"evaluation": summary_table(summary)} if summary else {}
        if summary.get("environment"):
            tables["environment"] = environment_table(summary)
        return TaskSection(
            task=task, task_type=struct.task_type.value, warnings=self.warnings_of(task),
            model_id=summary.get("model_id") or artifact_id(ctx.model_path(struct)),
            patch_id=artifact_id(patch_path), patch=payload["patch"],
            examples=example_pairs(examples, ctx.num_examples) if examples else [],
            curves=curves, metrics=metrics, tables=tables, notes=patch_note,
        )

    def warnings_of(self, task: str) -> list[str]:
        """What the project's runs (and this one) found wrong with the task's figures, once each."""
        runs = sorted((self.ctx.proj_path / "runs").glob("*")) if (self.ctx.proj_path / "runs").is_dir() else []
        found = [w for run in [*runs, self.ctx.run_dir] for w in read_warnings(run)]
        return list(dict.fromkeys(w.message for w in found if w.task == task))

    def report_data(self) -> ReportData:
        ctx = self.ctx
        sections = [s for s in (self.task_section(t) for t in ctx.task_list) if s is not None]
        if not sections:
            raise AttackConfigError(
                f"report: no patches for {', '.join(ctx.task_list)} in project {ctx.cfg.proj!r}; run "
                "`pandemonium attack` first (or reuse.patches=<project>)"
            )
        headline: dict[str, Any] = {}
        for task in ctx.task_list:
            summary = read_summary(ctx.artifact(ctx.get_struct(task), EVAL_SUMMARY_KEY))
            if summary and any(s.task == task for s in sections):
                headline.update(headline_cards(task, summary))
        transfer_path = None
        for task in ctx.task_list:
            path = ctx.get_struct(task).paths.get(TRANSFER_KEY)
            if path and Path(path).is_file():
                transfer_path = Path(path)
        transfer_path = transfer_path or ctx.project_newest(TRANSFER_KEY, "transfer")
        transfer_path = transfer_path if transfer_path and transfer_path.suffix == ".csv" else None
        robustness = {}
        for condition in CURVE_CONDITIONS:
            path = None
            for task in ctx.task_list:
                candidate = ctx.get_struct(task).paths.get(f"robustness_{condition}")
                if candidate and Path(candidate).is_file():
                    path = Path(candidate)
            path = path or ctx.project_newest(TRANSFER_KEY, f"robustness_{condition}")
            if path is not None:
                robustness[condition] = read_table(path)
        try:
            config_yaml = OmegaConf.to_yaml(ctx.cfg, resolve=True)
        except Exception:  # noqa: BLE001 - an unresolvable interpolation: show it unresolved
            config_yaml = OmegaConf.to_yaml(ctx.cfg)
        links = {"run directory": str(ctx.run_dir), "results of project": str(ctx.proj_path)}
        if ctx.tracking is not None and ctx.tracking.tracking_uri:
            links["MLflow"] = f"mlflow ui --backend-store-uri {ctx.tracking.tracking_uri}"
        links["TensorBoard"] = f"tensorboard --logdir {ctx.proj_path}"
        sweep_dir = newest_sweep(ctx.proj_path)  # the project's newest multirun: its jobs side by side
        return ReportData(
            title=f"pandemonium report: {ctx.cfg.proj} ({', '.join(ctx.task_list)})",
            command=command_line(), config_yaml=config_yaml, headline=headline, sections=sections,
            transfer=read_table(transfer_path) if transfer_path else None,
            robustness=robustness, links=links,
            sweep=sweep_table(read_sweep(sweep_dir)) if sweep_dir else None, sweep_dir=str(sweep_dir or ""),
            studies=study_reports(ctx.fm.list_artifacts("plots", task_name="*")),
        )

    def report(self) -> dict[str, Any]:
        """Render the HTML report and store it (FileManager key ``reports``)."""
        ctx = self.ctx
        data = self.report_data()
        path = ctx.fm.construct_saving_path(obj=None, key=REPORT_KEY, file_name="report.html")
        write_report(data, path)
        for task in ctx.task_list:
            ctx.get_struct(task).paths[REPORT_KEY] = path
        log.info("report written to %s", path)
        values = {k: (v.value if isinstance(v, HeadlineFigure) else v) for k, v in data.headline.items()}
        finite = {k: v for k, v in values.items() if isinstance(v, float) and math.isfinite(v)}
        return {"report": str(path), "headline": finite}
