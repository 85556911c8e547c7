"""A scheduler for the validation tests: one step per task that fails the way ``$VALIDATION_FAULT`` says."""

from __future__ import annotations

import os

from omegaconf import DictConfig

from pandemonium.errors import PandemoniumError
from pandemonium.runs import warnings as run_warnings
from pandemonium.runs.base import AbstractBaseScheduler

FAULT_ENV = "VALIDATION_FAULT"


class WorkFailure(PandemoniumError):
    """A failure during work (exit code 1)."""

    exit_code = 1


class FaultScheduler(AbstractBaseScheduler):
    requires_existing_tasks = False

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["work"])

    def create_routine(self) -> None:
        for task in self.task_list:
            self.commands.append(self.work)
            self.params.append([task])

    def work(self, task_name: str) -> int:
        fault = os.environ.get(FAULT_ENV, "")
        if fault == "interrupt":
            raise KeyboardInterrupt
        if fault == "oserror":
            raise PermissionError(13, "Permission denied", str(self.proj_path / "MODELS"))
        if fault == "failure":
            raise WorkFailure(f"task {task_name!r}: the loss became NaN at step 3")
        if fault == "chance":
            run_warnings.check_model_quality(task_name, accuracy=0.1, num_classes=10)
        path = self.fm.construct_saving_path(obj={"task": task_name}, key="results", task_name=task_name)
        path.write_text('{"ok": true}')
        return 1
