"""``pandemonium train``: one model per task of ``task_list``, stored as a model artifact.

Each ``train`` step builds the model from the ``model`` group, fits it with a Lightning Trainer
(progress bar, best-checkpoint, early stopping, TensorBoard + MLflow loggers from the ``logging``
group), writes one artifact file through the FileManager (key ``models``) and attaches it to
``struct.paths["models"]``, where ``test``, ``predict``, ``attack`` and ``evaluate`` find it.

    pandemonium train task_list=[shapes_cls,digits] model=tiny trainer.lightning.max_epochs=5
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from omegaconf import DictConfig

from pandemonium.modes.steps.context import step_seed_of
from pandemonium.modes.steps.models import train_task
from pandemonium.modes.steps.routine import queue_per_task
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)


class TrainScheduler(AbstractBaseScheduler):
    """Subroutine ``train``: fit and store a model for every task (independent per task)."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["train"])
        self.results: dict[str, dict[str, Any]] = {}

    def create_routine(self) -> None:
        queue_per_task(self, "train", self.train_task, self.cfg.task_list)

    def train_task(self, task_name: str) -> dict[str, Any]:
        """Fit and store the task's model (see :func:`pandemonium.modes.steps.models.train_task`)."""
        struct = self.get_struct(task_name)
        result = train_task(struct, self.create_datamodule(struct), self.cfg, self.fm, self.run_dir, step_seed_of(self))
        self.results[task_name] = result
        return result

    def finish(self) -> Any:
        """Mean of the monitored validation metric over the tasks trained in this process (for sweeps);
        after a ``continue`` that trained nothing new, the last step's result."""
        values = [r[r["monitor"]] for r in self.results.values() if r.get("monitor") in r]
        return float(np.mean(values)) if values else self.last_result
