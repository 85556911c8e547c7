"""Schedulers used by the orchestration tests (importable via PYTHONPATH in subprocess tests)."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pandemonium import AbstractBaseScheduler
from pandemonium.runs.executors import Executor, execute_step_isolated

KILL_ENV = "ORCH_TEST_KILL_MARKER"


class RecordingScheduler(AbstractBaseScheduler):
    """step_a per task stores the random draws of the step (python, numpy, torch) and attaches the path;
    step_b sums what step_a stored. With ``$ORCH_TEST_KILL_MARKER`` set, the process SIGKILLs itself in
    the second step_a the first time (the marker file records that it happened)."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["a", "b"])
        self.calls: list[tuple[str, tuple]] = []
        self.hooks: list[str] = []

    def after_preparation_hook(self) -> None:
        self.hooks.append("after_preparation")

    def before_finishing_hook(self) -> None:
        self.hooks.append("before_finishing")

    def create_routine(self) -> None:
        if "a" in self.subroutines:
            for task in self.cfg.task_list:
                self.commands.append(self.step_a)
                self.params.append([task])
        if "b" in self.subroutines:
            self.commands.append(self.step_b)
            self.params.append([])

    def step_a(self, task_name: str) -> float:
        self.calls.append(("step_a", (task_name,)))
        marker = os.environ.get(KILL_ENV)
        if marker and self.step_index == 1 and not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        struct = self.get_struct(task_name)
        draws = {
            "python": random.random(),
            "numpy": float(np.random.rand()),
            "torch": float(torch.rand(1)),
            "generator": float(torch.rand(1, generator=self.torch_generator())),
            "samples": struct.num_samples,
        }
        path = self.fm.construct_saving_path(obj=draws, key="draws", task_name=task_name)
        path.write_text(json.dumps(draws))
        struct.paths["draws"] = path
        struct.paths["nested"] = {"dir": path.parent, "names": [path.name]}
        return draws["python"]

    def step_b(self) -> float:
        self.calls.append(("step_b", ()))
        total = 0.0
        for task in self.cfg.task_list:
            total += json.loads(self.get_struct(task).paths["draws"].read_text())["python"]
        return total


class IsolatedExecutor(Executor):
    """What a Ray executor does, in-process: every step of a group runs in a fresh scheduler built from
    the config (``execute_step_isolated``); outcomes come back in reverse order and are merged."""

    def run_group(self, scheduler, group):
        cfg = OmegaConf.to_container(scheduler.cfg, resolve=True)
        snapshot = scheduler.structs_snapshot()
        outcomes = [execute_step_isolated(cfg, snapshot, step.to_dict(), str(scheduler.run_dir)) for step in group]
        yield from reversed(outcomes)
