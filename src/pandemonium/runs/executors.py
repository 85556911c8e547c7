"""Executors run a scheduler's plan.

The plan is cut into *groups*: maximal runs of consecutive steps calling the same command (e.g.
``step_a(task)`` for every task). Steps of a group are independent, so an executor may run them in
parallel; the next group starts only when the whole group finished (barrier). After each step the
scheduler merges the ``struct.paths`` the step changed and persists them (``record_outcome``).

Writing a distributed executor is one class that overrides :meth:`Executor.run_group`;
:class:`pandemonium.runs.ray_executor.RayExecutor` (``executor=ray``) is one. Its workers call
:func:`execute_step_isolated`, which rebuilds the scheduler from the config, restores the paths, runs
one step and returns its :class:`StepOutcome`; the driver alone records outcomes in the run journal.
A command declares what one call needs with :func:`step_resources`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import DictConfig, OmegaConf, open_dict

from pandemonium.errors import ConfigError, PandemoniumError

if TYPE_CHECKING:
    from pandemonium.runs.base import AbstractBaseScheduler, Step, StepOutcome

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


class StepFailedError(PandemoniumError):
    """One or more steps of a group failed in an executor's workers; the finished steps of the group are
    recorded, so ``continue=<run dir>`` reruns only the failed ones."""

    exit_code = 1


RESOURCES_ATTR = "pandemonium_resources"


def step_resources(num_cpus: float | None = None, num_gpus: float | None = None,
                   memory: int | None = None) -> Callable[[F], F]:
    """Declare what one call of a scheduler command needs (used by distributed executors).

    ``memory`` is in bytes. Unset values fall back to the executor's ``step_resources`` config::

        class MyScheduler(AbstractBaseScheduler):
            @step_resources(num_cpus=2, num_gpus=1)
            def fit(self, task_name): ...
    """
    declared = {k: v for k, v in {"num_cpus": num_cpus, "num_gpus": num_gpus, "memory": memory}.items()
                if v is not None}

    def mark(func: F) -> F:
        setattr(func, RESOURCES_ATTR, declared)
        return func

    return mark


def step_task_name(scheduler: AbstractBaseScheduler, step: Step) -> str:
    """The task a step works on (its first parameter when that is a task of the plan), else the command."""
    if step.params and isinstance(step.params[0], str) and step.params[0] in scheduler.task_list:
        return step.params[0]
    return step.command


def group_steps(steps: Iterable[Step]) -> list[list[Step]]:
    """Split steps into maximal groups of consecutive calls of the same command."""
    groups: list[list[Step]] = []
    for step in steps:
        if groups and groups[-1][-1].command == step.command:
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


class Executor:
    """Runs pending steps group by group; subclasses decide how the steps of one group run.

    Life cycle in :meth:`AbstractBaseScheduler.run`: :meth:`prepare` (before the plan is made), then
    :meth:`execute`, then :meth:`close` (always, also when preparing the plan failed).
    """

    def prepare(self, scheduler: AbstractBaseScheduler) -> None:
        """Called before the scheduler prepares and plans its run. A distributed executor starts its
        engine here in the background (Ray: ``ray.init`` and warm workers) so that the start overlaps
        the driver's preparation; it must return at once. Default: nothing."""

    def close(self) -> None:
        """Release what :meth:`prepare` or :meth:`execute` started (called once the run ended, also
        after a failure). Default: nothing."""

    def execute(self, scheduler: AbstractBaseScheduler, steps: list[Step]) -> None:
        """Run ``steps`` (the pending part of the plan) and record every outcome as it arrives."""
        by_index = {step.index: step for step in steps}
        groups = group_steps(steps)
        progress = _progress(len(steps), type(scheduler).__name__)
        try:
            for group in groups:
                # the loop over a group's outcomes is the barrier: the next group waits for all of them
                for outcome in self.run_group(scheduler, group):
                    scheduler.record_outcome(by_index[outcome.index], outcome)
                    progress.advance()
        finally:
            progress.close()

    def run_group(self, scheduler: AbstractBaseScheduler, group: list[Step]) -> Iterator[StepOutcome]:
        """Run the independent steps of ``group`` and yield one :class:`StepOutcome` per step
        (any order). Override this to run them elsewhere (processes, Ray, a cluster)."""
        raise NotImplementedError


class LocalExecutor(Executor):
    """Runs every step in this process, in plan order (each outcome is recorded before the next step)."""

    def run_group(self, scheduler: AbstractBaseScheduler, group: list[Step]) -> Iterator[StepOutcome]:
        for step in group:
            yield scheduler.execute_step(step)


def execute_step_isolated(cfg: dict[str, Any] | DictConfig, snapshot: dict[str, Any],
                          step: dict[str, Any], run_dir: str) -> StepOutcome:
    """Run one step in a fresh scheduler built from ``cfg`` (what a remote worker does).

    The worker does not take the run lock (the driving process holds it) and writes nothing to the
    run's state files: the driver merges the returned outcome.
    """
    from pandemonium.runs.base import Step, active_run_dir, build_scheduler

    # one fresh config either way (a DictConfig is copied, plain data converted: not both)
    conf = cfg.copy() if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    with open_dict(conf):
        conf["continue"] = None
    with active_run_dir(run_dir):
        scheduler = build_scheduler(conf)
    scheduler.restore_paths(snapshot)
    return scheduler.execute_step(Step(**step))


def build_executor(spec: DictConfig | dict[str, Any]) -> Executor:
    """Instantiate the ``executor`` config (``_target_`` + kwargs)."""
    from pandemonium.build import instantiate

    target = spec.get("_target_") if spec else None
    if not target:
        raise ConfigError("executor config has no _target_ (use executor=local or executor=ray)")
    executor = instantiate(spec, what="executor")
    if not isinstance(executor, Executor):
        raise ConfigError(f"executor._target_ {target!r} is not a pandemonium Executor")
    return executor


class _Progress:
    """A rich progress bar over the steps when a terminal is attached; silent otherwise."""

    def __init__(self, total: int, name: str) -> None:
        self._bar = None
        if total > 1:
            try:
                from rich.progress import Progress

                self._bar = Progress(transient=True)
                self._task = self._bar.add_task(f"{name}: steps", total=total)
                self._bar.start()
            except Exception:  # noqa: BLE001 - a progress bar must never break a run
                self._bar = None

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            try:
                self._bar.stop()
            except Exception:  # noqa: BLE001 - a nested rich display (e.g. Lightning's bar) already tore down the live console
                pass
            self._bar = None


def _progress(total: int, name: str) -> _Progress:
    return _Progress(total, name)
