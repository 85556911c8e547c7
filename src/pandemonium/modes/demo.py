"""The ``demo`` mode: the whole job from one command, on a fresh offline machine.

``pandemonium demo`` creates ``shapes_cls`` and ``shapes_det`` (if missing), trains their models,
fits a targeted patch against the classifier and a disappearance patch against the detector,
evaluates them (each on its own held-out images, then every patch on every model, then robustness
over scale and viewing angle), writes the HTML report and prints where the report, the MLflow
database and the TensorBoard events are, with the headline figures. Every step is a step of the
scheduler plan, so an interrupted demo finishes with ``pandemonium demo continue=latest``.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pandemonium.attack.spec import EvaluationPlan
from pandemonium.modes.steps import EVAL_SUMMARY_KEY
from pandemonium.modes.steps.checks import check_attack_inputs
from pandemonium.modes.steps.context import (
    ModeContext,
    finish_tracking,
    start_tracking,
    step_seed_of,
    tracked,
)
from pandemonium.modes.steps.evaluate_patch import (
    PatchEvaluation,
    evaluation_headline,
    format_figure,
    headline_figures,
    split_counts,
)
from pandemonium.modes.steps.fit import PatchFit
from pandemonium.modes.steps.models import ModelSource
from pandemonium.modes.steps.report_builder import REPORT_KEY, ReportBuilder
from pandemonium.modes.steps.transfer import Transfer, read_summary
from pandemonium.plain import as_float
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)

__all__ = ["DemoScheduler"]

SUBROUTINES = ("create", "train", "attack", "evaluate", "transfer", "robustness", "report")
#: modules the steps import anyway, imported while a child process creates the missing tasks (Lightning
#: and MLflow alone take seconds; task creation keeps one core busy and leaves the other idle)
WARM_IMPORTS = ("lightning", "mlflow", "pandemonium.models.training", "pandemonium.tracking.mode_run")


class DemoScheduler(AbstractBaseScheduler):
    """create → train → attack → evaluate → transfer → robustness → report; ``run()`` returns the
    headline figures ``{"<task>/<metric>": rate}``."""

    requires_existing_tasks = False

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=SUBROUTINES)
        self.started = time.perf_counter()
        self.ctx = ModeContext.of(self)
        self.evaluation_plan = EvaluationPlan.from_mode(cfg.get("mode"), check=False)
        self.models = ModelSource(self.ctx)
        self.fitting = PatchFit(self.ctx, self.models)
        self.evaluation = PatchEvaluation(self.ctx, self.models)
        self.transfers = Transfer(self.ctx, self.models, self.evaluation_plan)
        self.builder = ReportBuilder(self.ctx)

    # ------------------------------------------------------------------ plan
    def after_preparation_hook(self) -> None:
        if "create" in self.subroutines:
            self.create_missing_tasks()
        check_attack_inputs(self.ctx, self.subroutines)
        self.evaluation_plan.check("mode")
        start_tracking(self.ctx, self)

    def before_finishing_hook(self) -> None:
        finish_tracking(self.ctx, evaluation_headline(self.ctx))

    def run(self) -> Any:
        with tracked(self.ctx):
            return super().run()

    def create_missing_tasks(self) -> None:
        """Materialise the demo tasks that are not on disk yet (existing ones are kept), in a child process
        while this one imports what the steps need; should the child fail, here (to name the culprit)."""
        from pandemonium.errors import UnknownTaskError
        from pandemonium.tasks.background import BackgroundTaskCreation
        from pandemonium.tasks.creators import create_task, list_creatable
        from pandemonium.tasks.errors import TaskCreationError

        missing = [t for t in self.task_list if t not in self.known_tasks()]
        creatable = set(list_creatable())
        for task in missing:
            if task not in creatable:
                raise UnknownTaskError(f"demo: task {task!r} is neither on disk nor creatable "
                                       f"(creatable: {', '.join(sorted(creatable))})")
        extra = (self.cfg.get("mode") or {}).get("creator_kwargs")
        kwargs = OmegaConf.to_container(extra, resolve=True) if extra is not None else {}
        if not missing:
            return
        start = time.perf_counter()
        job = BackgroundTaskCreation.start(missing, self.cfg.data_dir, int(self.cfg.seed), kwargs)
        seconds: dict[str, float] = {}
        if job is not None:
            for module in WARM_IMPORTS:
                importlib.import_module(module)
            try:
                seconds = job.wait()
            except TaskCreationError as err:
                log.warning("demo: %s; creating them here", err)
        for task in missing:
            if task not in seconds:
                begin = time.perf_counter()
                create_task(task, self.cfg.data_dir, seed=int(self.cfg.seed), **kwargs)
                seconds[task] = time.perf_counter() - begin
            log.info("demo: created task %s in %.1f s", task, seconds[task])
        if job is not None:
            log.info("demo: tasks created in %.1f s in a child process (start-up imports meanwhile)",
                     time.perf_counter() - start)

    def create_routine(self) -> None:
        per_task = (("train", self.train_model), ("attack", self.attack_task), ("evaluate", self.evaluate_patch))
        for name, command in per_task:
            if name in self.subroutines:
                for task in self.task_list:
                    self.commands.append(command)
                    self.params.append([task])
        for name, command in (("transfer", self.transfer), ("robustness", self.robustness), ("report", self.report)):
            if name in self.subroutines:
                self.commands.append(command)
                self.params.append([])

    # ------------------------------------------------------------------ steps (names are journal entries)
    def train_model(self, task_name: str) -> dict[str, Any]:
        return self.models.ensure(self.get_struct(task_name), self.create_datamodule, step_seed_of(self))

    def attack_task(self, task_name: str) -> dict[str, Any]:
        return self.fitting.attack_task(task_name, step_seed_of(self))

    def evaluate_patch(self, task_name: str) -> dict[str, Any]:
        return self.evaluation.evaluate_patch(task_name)

    def transfer(self) -> dict[str, Any]:
        return self.transfers.transfer()

    def robustness(self) -> dict[str, Any]:
        return self.transfers.robustness()

    def report(self) -> dict[str, Any]:
        return self.builder.report()

    # ------------------------------------------------------------------ result
    def headline_rows(self) -> list[dict[str, Any]]:
        """One row per task: its stored evaluation summary and the bar from ``mode.targets``."""
        targets = OmegaConf.to_container((self.cfg.get("mode") or {}).get("targets") or {}, resolve=True)
        rows = []
        for task in self.task_list:
            summary = read_summary(self.get_struct(task).paths.get(EVAL_SUMMARY_KEY))
            if not summary:
                continue
            target = targets.get(task) or {}
            rows.append({"task": task, "metric": summary["metric"], "rate": as_float(summary.get("rate")),
                         "area": as_float(summary.get("patch_area_fraction")), "min": target.get("min"),
                         "summary": summary})
        return rows

    def finish(self) -> Any:
        rows = self.headline_rows()
        report = self.get_struct(self.task_list[0]).paths.get(REPORT_KEY) if self.task_list else None
        tracking = self.ctx.tracking
        uri = tracking.tracking_uri if tracking is not None else None
        lines = ["", "=" * 78, f"pandemonium demo finished in {time.perf_counter() - self.started:.0f} s",
                 "=" * 78]
        if report:
            lines += [f"report      : {report}", f"              open it in a browser: file://{Path(report).absolute()}"]
        if uri:
            lines += [f"MLflow DB   : {uri}", f"              mlflow ui --backend-store-uri {uri}"]
        lines += [f"TensorBoard : tensorboard --logdir {self.proj_path}", f"run folder  : {self.run_dir}", "",
                  "headline figures (held-out test split; patched, no patch, random patch and the paired "
                  "difference, 95% CI over scenes):"]
        for row in rows:
            lines += demo_lines(row)
        print("\n".join(lines), flush=True)
        return {f"{r['task']}/{r['metric']}": float(r["rate"]) for r in rows}


def demo_lines(row: dict[str, Any]) -> list[str]:
    """The demo's lines of one task: the patched rate (with the patch area and the bar), then the split
    and counts and the baselines with their intervals (the report's headline cards, MLflow's metrics)."""
    summary = row["summary"]
    figures = headline_figures(summary)
    patched = format_figure(figures[0]) if figures else f"{row['rate']:.3f}"
    area = f", patch = {100 * row['area']:.1f}% of the image" if math.isfinite(row["area"]) else ""
    bar = ""
    if row.get("min") is not None:
        bar = f"  [{'PASS' if row['rate'] >= row['min'] else 'BELOW'} target >= {row['min']}]"
    lines = [f"  {row['task']:<12} {row['metric']:<18} {patched}{area}{bar}"]
    lines.append(f"    {split_counts(summary)}")
    lines += [f"    {figure.label:<22} {format_figure(figure)}" for figure in figures[1:]]
    if summary.get("model_stopped_by_time_cap"):
        lines.append("    note: the model's training was stopped by the wall-clock cap (not reproducible bit for bit)")
    return lines
