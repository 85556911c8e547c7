"""The preamble every per-task mode shares: one step per task, and the task's stored model.

Light on purpose (no torch at import), so ``create`` and ``adopt`` stay cheap to start::

    class TrainScheduler(AbstractBaseScheduler):
        def create_routine(self) -> None:
            queue_per_task(self, "train", self.train_task)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from omegaconf import OmegaConf

from pandemonium.runs.base import AbstractBaseScheduler

__all__ = ["load_stored_model", "queue_per_task"]


def queue_per_task(
    scheduler: AbstractBaseScheduler, subroutine: str, command: Callable[[str], Any], tasks: Iterable[str] | None = None
) -> None:
    """The routine of a per-task mode: when ``subroutine`` was asked for, one ``command(task)`` step per
    task of ``tasks`` (the scheduler's task list by default), in order."""
    if subroutine in scheduler.subroutines:
        for task in scheduler.task_list if tasks is None else tasks:
            scheduler.commands.append(command)
            scheduler.params.append([task])


def load_stored_model(scheduler: AbstractBaseScheduler, task_name: str) -> tuple[Any, Any, dict[str, Any], Any]:
    """``(struct, model, meta, device)`` of the task's stored model, loaded on the configured ``device``
    (the preamble of ``test`` and ``predict``)."""
    from pandemonium.models.storage import attach_stored_model, load_task_model
    from pandemonium.models.training import resolve_device as torch_device

    struct = scheduler.get_struct(task_name)
    attach_stored_model(struct, scheduler.fm)
    device = torch_device(str(OmegaConf.select(scheduler.cfg, "device", default="auto")))
    model, meta = load_task_model(struct, map_location=device)
    return struct, model, meta, device
