"""A two-subroutine scheduler: count samples per task, then sum them up."""

from __future__ import annotations

import json

from omegaconf import DictConfig

from pandemonium import AbstractBaseScheduler
from pandemonium_example_plugin import COUNTS_KEY


class ExampleCountScheduler(AbstractBaseScheduler):
    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["count", "total"])

    def create_routine(self) -> None:
        if "count" in self.subroutines:
            for task in self.cfg.task_list:
                self.commands.append(self.count)
                self.params.append([task])
        if "total" in self.subroutines:
            self.commands.append(self.total)
            self.params.append([])

    def count(self, task_name: str) -> int:
        struct = self.get_struct(task_name)
        counts = {"task": task_name, "samples": struct.num_samples, "scale": self.cfg.mode.scale}
        path = self.fm.construct_saving_path(obj=counts, key=COUNTS_KEY, task_name=task_name)
        path.write_text(json.dumps(counts))
        struct.paths[COUNTS_KEY] = path
        return struct.num_samples

    def total(self) -> int:
        total = 0
        for task_name in self.cfg.task_list:
            struct = self.get_struct(task_name)
            total += json.loads(struct.paths[COUNTS_KEY].read_text())["samples"]
        return total * int(self.cfg.mode.scale)
