"""The ``attack`` mode: per task, fit a patch against the task's model, evaluate it, store it.

Subroutines (``mode.subroutines``):

``train``
    Train a model for each task that has none (stored in this run, found in this project, or
    attached by ``reuse.models=<project>``), with the ``train`` mode's code.
``attack``
    Build the pipeline from the task's attack preset (``configs/attack``), fit the patch with
    :class:`~pandemonium.attack.training.PatchTrainer`, store the patch, its checkpoint, the
    pipeline YAML and the training curves. ``mode.universal=true`` fits ONE patch against every
    task of ``task_list`` at once (the losses of all tasks are summed).
``evaluate``
    Fixed-condition evaluation of the task's patch (patched vs control, same sampled conditions):
    eval table, summary with confidence intervals, before/after examples for the report. Runs alone
    on patches of an earlier project with ``mode.subroutines=[evaluate] reuse.patches=<project>``.

The scheduler only lists steps; the work is done by step objects of :mod:`pandemonium.modes.steps`
(``ModelSource``, ``PatchFit``, ``PatchEvaluation``) sharing one ``ModeContext``. Each task's attack
is an :class:`~pandemonium.attack.spec.AttackSpec` built once from the ``attack`` group.

Everything a step produces goes through ``fm.construct_saving_path`` and into ``struct.paths``,
so ``continue=latest`` after an interruption skips finished tasks. MLflow: one parent run per
invocation, one child run per task and step, tagged with task, model and patch ids.

Bad input is refused before any work starts (:func:`~pandemonium.modes.steps.checks.check_attack_inputs`):
a preset that does not fit a task's type, a patch larger than the images, a ``reuse`` that finds
nothing, a task with no model when ``train`` is off.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from pandemonium.modes.steps.checks import check_attack_inputs, warn_zero_success
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
    stored_evaluation_lines,
)
from pandemonium.modes.steps.fit import PatchFit
from pandemonium.modes.steps.models import ModelSource
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)

__all__ = ["AttackScheduler"]

SUBROUTINES = ("train", "attack", "evaluate")


class AttackScheduler(AbstractBaseScheduler):
    """See the module docstring. ``run()`` returns ``{"<task>/<metric>": headline success rate}``."""

    default_tasks_from = ("models",)  # without task_list: the tasks whose models it holds (or reuse.models')

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=SUBROUTINES)
        self.ctx = ModeContext.of(self)
        self.models = ModelSource(self.ctx)
        self.fitting = PatchFit(self.ctx, self.models)
        self.evaluation = PatchEvaluation(self.ctx, self.models)

    def create_routine(self) -> None:
        if "train" in self.subroutines:
            for task in self.task_list:
                self.commands.append(self.train_model)
                self.params.append([task])
        if "attack" in self.subroutines:
            if self.ctx.universal:
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

    def after_preparation_hook(self) -> None:
        check_attack_inputs(self.ctx, self.subroutines)
        start_tracking(self.ctx, self)

    def before_finishing_hook(self) -> None:
        headline = self.headline()
        warn_zero_success(headline)
        finish_tracking(self.ctx, headline)

    def run(self) -> Any:
        with tracked(self.ctx):
            return super().run()

    # ------------------------------------------------------------------ steps (names are journal entries)
    def train_model(self, task_name: str) -> dict[str, Any]:
        """Train the task's model with the ``train`` mode's code unless one is stored already."""
        return self.models.ensure(self.get_struct(task_name), self.create_datamodule, step_seed_of(self))

    def attack_task(self, task_name: str) -> dict[str, Any]:
        """Fit the patch of one task and store patch, checkpoint, pipeline YAML and curves."""
        return self.fitting.attack_task(task_name, step_seed_of(self))

    def attack_universal(self) -> dict[str, Any]:
        """Fit ONE patch against every task of ``task_list`` (losses summed) and attach it to all."""
        return self.fitting.attack_universal(step_seed_of(self))

    def evaluate_patch(self, task_name: str) -> dict[str, Any]:
        """Fixed-condition evaluation of the task's patch on the task's model and held-out images."""
        return self.evaluation.evaluate_patch(task_name)

    def headline(self) -> dict[str, float]:
        """``{"<task>/<metric>": rate}`` of every evaluated task (from the stored summaries)."""
        return evaluation_headline(self.ctx)

    def finish(self) -> dict[str, float]:
        return self.headline()

    def summary_lines(self) -> list[str]:
        """The base lines, each evaluated task's patched, control and random-patch rates and their
        difference (with intervals), plus the queries each black-box patch cost (``attack=blackbox``)."""
        fits = self.ctx.results.get("fits") or {}
        return [*super().summary_lines(), *stored_evaluation_lines(self.ctx), *(
            f"  {task}: black-box patch after {fit['queries']} queries to the model (budget {fit['query_budget']})"
            for task, fit in fits.items() if fit.get("method") == "blackbox")]
