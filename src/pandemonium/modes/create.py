"""``pandemonium create``: materialise every task of ``task_list`` under ``<data_dir>/tasks``.

Existing tasks are kept unless ``mode.force=true``; ``mode.creator_kwargs`` go to every creator;
``mode.creator`` names a creator or importer for tasks of any name, e.g.
``pandemonium create task_list=[my_photos] mode.creator=import_folder +mode.creator_kwargs.root=DIR``.
``run()`` returns ``{task: {"status": "created" | "kept", "seconds": float, "path": str}}``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pandemonium.errors import UnknownTaskError
from pandemonium.modes.steps.routine import queue_per_task
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)


class CreateScheduler(AbstractBaseScheduler):
    """One ``create`` step per task (independent, so executors may run them in parallel)."""

    requires_existing_tasks = False

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["create"])
        self.summary: dict[str, dict[str, Any]] = {}
        self.force = bool(cfg.mode.get("force", False))
        self.creator: str | None = cfg.mode.get("creator") or None

    def after_preparation_hook(self) -> None:
        # every name is checked before anything is built, so a typo costs no work
        from pandemonium.tasks.creators import DSET_CREATORS, TASK_CREATORS, list_creatable

        creatable = set(list_creatable())
        if self.creator is not None:
            if self.creator not in TASK_CREATORS and self.creator not in DSET_CREATORS:
                known = ", ".join(sorted({*TASK_CREATORS, *DSET_CREATORS}))
                raise UnknownTaskError(f"mode.creator={self.creator!r} is no creator or importer (known: {known})")
            return  # any task name: the creator makes it
        on_disk = set(self.known_tasks())
        for task in self.task_list:
            if task not in creatable and task not in on_disk:
                raise UnknownTaskError(
                    f"unknown task {task!r}: creatable tasks: {', '.join(sorted(creatable)) or 'none'}"
                )

    def create_routine(self) -> None:
        queue_per_task(self, "create", self.create)

    def create(self, task_name: str) -> dict[str, Any]:
        from pandemonium.tasks.creators import create_task, list_tasks
        from pandemonium.tasks.format import task_path

        existed = task_name in list_tasks(self.cfg.data_dir)
        if existed and not self.force:
            # kept without asking the registry: tasks imported from users' data have no task creator
            log.info("task %s exists; kept (mode.force=true re-creates it)", task_name)
            entry = {"status": "kept", "seconds": 0.0, "path": str(task_path(self.cfg.data_dir, task_name))}
            self.summary[task_name] = entry
            return entry
        extra = self.cfg.mode.get("creator_kwargs")
        kwargs = OmegaConf.to_container(extra, resolve=True) if extra is not None else {}
        start = time.perf_counter()
        path = create_task(task_name, self.cfg.data_dir, seed=int(self.cfg.seed), force=self.force,
                           creator=self.creator, **kwargs)
        seconds = time.perf_counter() - start
        log.info("task %s created in %.2f s (%s)", task_name, seconds, path)
        entry = {"status": "created", "seconds": round(seconds, 3), "path": str(path)}
        self.summary[task_name] = entry
        return entry

    def finish(self) -> dict[str, dict[str, Any]]:
        total = sum(e["seconds"] for e in self.summary.values())
        log.info("create: %d task(s) in %.2f s", len(self.summary), total)
        return self.summary
