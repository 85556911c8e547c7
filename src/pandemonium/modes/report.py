"""The ``report`` mode: one self-contained HTML page from the stored results of a project.

Per task of ``task_list`` the newest patch, its fixed-condition evaluation (summary with CIs,
before/after examples with the model's predictions) and its optimisation curves; then the newest
transfer matrix and robustness curves of the project; then the command and the composed config.
The page is built by :class:`~pandemonium.modes.steps.report_builder.ReportBuilder`.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from pandemonium.modes.steps.checks import check_report_inputs
from pandemonium.modes.steps.context import ModeContext, finish_tracking, start_tracking, tracked
from pandemonium.modes.steps.report_builder import REPORT_KEY, ReportBuilder, example_pairs, summary_table
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)

__all__ = ["REPORT_KEY", "ReportScheduler", "example_pairs", "summary_table"]


class ReportScheduler(AbstractBaseScheduler):
    """``pandemonium report``: the HTML report of the project's stored results; returns its path."""

    default_tasks_from = ("patches",)  # without task_list: the tasks whose patches the project holds

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=("report",))
        self.ctx = ModeContext.of(self)
        self.builder = ReportBuilder(self.ctx)

    def create_routine(self) -> None:
        if "report" in self.subroutines:
            self.commands.append(self.report)
            self.params.append([])

    def after_preparation_hook(self) -> None:
        check_report_inputs(self.ctx)
        start_tracking(self.ctx, self)

    def before_finishing_hook(self) -> None:
        finish_tracking(self.ctx, {})

    def run(self) -> Any:
        with tracked(self.ctx):
            return super().run()

    def report(self) -> dict[str, Any]:
        """Render the HTML report and store it (FileManager key ``reports``)."""
        return self.builder.report()

    def finish(self) -> Any:
        path = self.get_struct(self.task_list[0]).paths.get(REPORT_KEY)
        if path:
            print(f"report: {path}")
        return str(path) if path else None
