"""The ``evaluate`` mode: every stored patch against every stored model, under fixed conditions.

For the tasks of ``task_list``, the newest patch of each task (and a universal patch, if one was
fitted) is evaluated on the newest model of each task: the model's own evaluation pipeline (its
task's attack spec, held-out images), conditions drawn ONCE from ``seed`` and replayed for every
patch, each sample patched and as control. Outputs (FileManager key ``transfer``):

- ``transfer.csv``: the transfer matrix in long form (patch, model, rate with its 95% CI, control,
  random patch, paired difference patched - random, counts) and ``transfer_records.parquet``: the
  per-row success behind it, with each row's scene;
- ``robustness_<condition>.csv``: the same figures per patch side / image side, viewing angle,
  brightness, blur and JPEG quality, everything else fixed.

Rates: the success metric of the *model's* task (its attack spec), on the held-out test split;
intervals from a bootstrap over scenes (:mod:`pandemonium.attack.statistics`). The work is done by :class:`~pandemonium.modes.steps.transfer.Transfer`.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from pandemonium.attack.spec import EvaluationPlan
from pandemonium.modes.steps.checks import check_evaluation_inputs
from pandemonium.modes.steps.context import ModeContext, finish_tracking, start_tracking, tracked
from pandemonium.modes.steps.models import ModelSource
from pandemonium.modes.steps.transfer import (
    TRANSFER_KEY,
    Transfer,
    read_summary,
    transfer_headline,
    transfer_lines,
)
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)

__all__ = ["TRANSFER_KEY", "EvaluateScheduler", "read_summary", "transfer_headline"]


class EvaluateScheduler(AbstractBaseScheduler):
    """``pandemonium evaluate``: transfer matrix and robustness curves of the stored patches.

    ``run()`` returns ``{"<patch> -> <model>": rate}``.
    """

    default_tasks_from = ("patches",)  # without task_list: the tasks whose patches the project holds

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=("transfer", "robustness"))
        self.ctx = ModeContext.of(self)
        self.evaluation_plan = EvaluationPlan.from_mode(cfg.get("mode"), check=False)
        self.transfers = Transfer(self.ctx, ModelSource(self.ctx), self.evaluation_plan)

    def create_routine(self) -> None:
        if "transfer" in self.subroutines:
            self.commands.append(self.transfer)
            self.params.append([])
        if "robustness" in self.subroutines:
            self.commands.append(self.robustness)
            self.params.append([])

    def after_preparation_hook(self) -> None:
        self.evaluation_plan.check("mode")
        check_evaluation_inputs(self.ctx, self.subroutines)
        start_tracking(self.ctx, self)

    def before_finishing_hook(self) -> None:
        finish_tracking(self.ctx, self.headline())

    def run(self) -> Any:
        with tracked(self.ctx):
            return super().run()

    def transfer(self) -> dict[str, Any]:
        """Transfer matrix: every stored patch x every stored model, patched vs control."""
        return self.transfers.transfer()

    def robustness(self) -> dict[str, Any]:
        """Rate vs patch scale and vs viewing angle for the diagonal (or all) patch x model pairs."""
        return self.transfers.robustness()

    def headline(self) -> dict[str, float]:
        return transfer_headline(self.ctx)

    def finish(self) -> Any:
        return self.headline()

    def summary_lines(self) -> list[str]:
        """The base lines, then each pair's patched, control and random-patch rates and their difference."""
        return [*super().summary_lines(), *transfer_lines(self.ctx)]
