"""The scheduler base: a mode is a plan of atomic steps over ``task_list`` that an executor runs.

A scheduler subclasses :class:`AbstractBaseScheduler`, names its subroutines and fills
``self.commands`` / ``self.params`` in :meth:`create_routine` (exactly as in mml)::

    class BuzzScheduler(AbstractBaseScheduler):
        def __init__(self, cfg):
            super().__init__(cfg=cfg, available_subroutines=["a", "b"])

        def create_routine(self):
            if "a" in self.subroutines:
                for task in self.cfg.task_list:
                    self.commands.append(self.step_a)
                    self.params.append([task])
            if "b" in self.subroutines:
                self.commands.append(self.step_b)
                self.params.append([])

        def step_a(self, task_name):
            struct = self.get_struct(task_name)
            path = self.fm.construct_saving_path(obj=..., key="foo", task_name=task_name)
            struct.paths["foo"] = path        # persists across steps and across `continue`

The run directory's files (plan, finished steps, ``struct.paths``, lock) are the run journal,
:mod:`pandemonium.runs.journal`.

``continue=<run dir | latest>`` reopens that run directory, checks that the plan is the same,
skips finished steps and restores every ``struct.paths`` entry.

Life cycle of :meth:`run`: lock -> ``after_preparation_hook()`` -> ``create_routine()`` ->
write/check plan -> executor runs the pending steps (each seeded from ``(seed, step index)``) ->
``before_finishing_hook()`` -> ``finish()`` whose value ``run()`` returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

from pandemonium.errors import (
    ConfigError,
    ContinueError,
    UnknownSubroutineError,
    UnknownTaskError,
)
from pandemonium.runs import warnings as run_warnings
from pandemonium.runs.file_manager import FileManager, allocate_run_dir, find_run_dir, validate_name
from pandemonium.runs.journal import (
    PLAN_FILE,
    RunJournal,
    Step,
    StepOutcome,
    decode_paths,
    discard_created,
    encode_paths,
    read_continue_changes,
)

log = logging.getLogger(__name__)

# set by the CLI to the run directory Hydra created; without it a scheduler allocates its own
_ACTIVE_RUN_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("pandemonium_run_dir", default=None)


@contextlib.contextmanager
def active_run_dir(path: str | os.PathLike) -> Iterator[None]:
    """Schedulers created inside this context use ``path`` as their run directory."""
    token = _ACTIVE_RUN_DIR.set(Path(path).absolute())
    try:
        yield
    finally:
        _ACTIVE_RUN_DIR.reset(token)


def tasks_named_on_command_line() -> bool:
    """Whether the running Hydra job's overrides set ``task_list`` or the ``tasks`` group (True outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    keys = {str(o).split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    return bool(keys & {"task_list", "tasks"})


def step_seed(seed: int, index: int) -> int:
    """The seed of step ``index``: independent streams per step, stable across continue/executors."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch global RNGs (for user code that draws from them)."""
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


class AbstractBaseScheduler:
    """Base of every mode. See the module docstring for the contract and the run directory files.

    Args:
        cfg: the composed config (``task_list``, ``mode``, ``seed``, ``data_dir``, ``out_dir``, ``proj``,
            ``continue``, ``executor``, ``reuse``, ...).
        available_subroutines: names that ``cfg.mode.subroutines`` may select.
    """

    #: ``run()`` refuses to start when a task of ``task_list`` is not created (``create`` turns it off)
    requires_existing_tasks: bool = True
    #: artifact keys whose stored tasks (this project's, or ``reuse.<key>``'s) are the task list when
    #: the command names none (``pandemonium report proj=p`` reports what ``p`` holds, not the demo tasks)
    default_tasks_from: tuple[str, ...] = ()
    #: modules a remote worker imports while the driver prepares (``RayExecutor.prepare``), besides the
    #: scheduler's own module and what every step needs
    worker_imports: tuple[str, ...] = ()
    #: artifact keys an interrupted step resumes from; ``continue`` keeps them (other files of the
    #: interrupted step go, so the rerun writes them under the same names)
    resumed_keys: tuple[str, ...] = ("patch_checkpoints",)

    def __init__(self, cfg: DictConfig, available_subroutines: Sequence[str]) -> None:
        self.cfg = cfg
        self.available_subroutines = list(available_subroutines)
        self._absolutise_roots()
        self.subroutines = self._select_subroutines()
        self.task_list: list[str] = [validate_name(str(t), "task name") for t in (cfg.get("task_list") or [])]
        self.commands: list[Callable[..., Any]] = []
        self.params: list[list[Any]] = []
        self.continuing = cfg.get("continue") not in (None, "", False)
        self.run_dir = self._resolve_run_dir()
        self.proj_path = Path(cfg.out_dir) / str(cfg.proj)
        reuse = OmegaConf.to_container(cfg.reuse, resolve=True) if cfg.get("reuse") else {}
        self.fm = FileManager(proj_path=self.proj_path, run_path=self.run_dir, reuse=reuse)
        self._structs: dict[str, Any] = {}
        self._restored_paths: dict[str, dict[str, Any]] = {}
        self.journal = RunJournal(self.run_dir)
        self.step_index: int | None = None
        self.step_seed: int | None = None
        self.last_result: Any = None
        self.run_warnings: list[run_warnings.RunWarning] = []
        self._executor: Any = None
        if self.continuing:  # the interrupted run's own task list (it may have come from stored artifacts)
            self.task_list = self.journal.stored_header().get("task_list", self.task_list)
        elif self.default_tasks_from and not tasks_named_on_command_line():
            self.task_list = self.stored_tasks(self.default_tasks_from) or self.task_list

    # -- set-up ------------------------------------------------------------------------------------
    def _absolutise_roots(self) -> None:
        validate_name(str(self.cfg.proj), "project name (proj)")
        with open_dict(self.cfg):
            for key in ("data_dir", "out_dir"):
                self.cfg[key] = str(Path(str(self.cfg[key])).expanduser().absolute())

    def _select_subroutines(self) -> list[str]:
        mode = self.cfg.get("mode") or {}
        requested = mode.get("subroutines")
        if requested is None:
            return list(self.available_subroutines)
        requested = [str(s) for s in requested]
        for name in requested:
            if name not in self.available_subroutines:
                raise UnknownSubroutineError(
                    f"unknown subroutine {name!r} in mode.subroutines of mode {mode.get('id')!r}; "
                    f"available: {', '.join(self.available_subroutines)}"
                )
        return requested

    def _resolve_run_dir(self) -> Path:
        out_dir, proj = Path(self.cfg.out_dir), str(self.cfg.proj)
        active = _ACTIVE_RUN_DIR.get()
        if self.continuing:
            mode_id = (self.cfg.get("mode") or {}).get("id")
            found = find_run_dir(out_dir, proj, str(self.cfg["continue"]), mode=None if mode_id is None else str(mode_id))
            if found is None:
                raise ContinueError(
                    f"continue={self.cfg['continue']}: no resumable run (a run directory with {PLAN_FILE}) "
                    f"found; runs of project {proj!r} live in {out_dir / proj / 'runs'}"
                )
            return found
        if active is not None:
            active.mkdir(parents=True, exist_ok=True)
            return active
        return allocate_run_dir(out_dir, proj)

    # -- API for subclasses ------------------------------------------------------------------------
    def create_routine(self) -> None:
        """Fill ``self.commands`` (bound methods) and ``self.params`` (argument lists)."""
        raise NotImplementedError(f"{type(self).__name__} must implement create_routine()")

    def after_preparation_hook(self) -> None:
        """Called by :meth:`run` once the scheduler is set up and the run is locked, before planning."""

    def before_finishing_hook(self) -> None:
        """Called by :meth:`run` after the last step, before :meth:`finish`."""

    def finish(self) -> Any:
        """The value :meth:`run` returns. Default: the return value of the last step of the plan
        (restored from ``steps.jsonl`` when that step ran before a ``continue``, if JSON-serialisable).
        Override it to return e.g. a metric that a sweep optimises."""
        return self.last_result

    def stored_tasks(self, keys: Sequence[str]) -> list[str]:
        """Created tasks with a stored artifact of one of ``keys`` here or in the ``reuse.<key>`` project."""
        def stored(task: str, key: str) -> bool:
            project = self.fm.reuse.get(key)
            return bool(self.fm.list_artifacts(key, task) or (project and self.fm.find_reusable(key, project, task)))

        return [task for task in self.known_tasks() if any(stored(task, key) for key in keys)]

    def known_tasks(self) -> list[str]:
        """Tasks created in ``data_dir``."""
        from pandemonium.tasks.creators import list_tasks

        return sorted(list_tasks(self.cfg.data_dir))

    def get_struct(self, task_name: str) -> Any:
        """The :class:`~pandemonium.tasks.struct.TaskStruct` of ``task_name``; the same object for the
        whole run, so ``struct.paths`` set in one step is seen by the next ones."""
        validate_name(str(task_name), "task name")
        if task_name not in self._structs:
            from pandemonium.tasks.creators import load_task_struct

            known = self.known_tasks()
            if task_name not in known:
                raise UnknownTaskError(self._unknown_task_message(task_name, known))
            struct = load_task_struct(task_name, self.cfg.data_dir)
            self.fm.attach_reused(struct.paths, task_name)
            struct.paths.update(self._restored_paths.get(task_name, {}))
            self._structs[task_name] = struct
        return self._structs[task_name]

    def _unknown_task_message(self, task_name: str, known: list[str]) -> str:
        try:
            from pandemonium.tasks.creators import list_creatable

            creatable = sorted(set(list_creatable()) - set(known))
        except ImportError:  # pragma: no cover
            creatable = []
        msg = f"unknown task {task_name!r}: created tasks in {self.cfg.data_dir}: {', '.join(known) or 'none'}"
        if task_name in creatable:
            msg = (f"task {task_name!r} is not created yet in {self.cfg.data_dir}; "
                   f"run `pandemonium create task_list=[{task_name}]`")
        elif creatable:
            msg += f"; creatable with `pandemonium create`: {', '.join(creatable)}"
        return msg

    def create_datamodule(self, struct: Any) -> Any:
        """A Lightning datamodule for ``struct`` configured by ``cfg`` (sampling, loaders, augmentations, fold)."""
        from pandemonium.tasks.datamodule import TaskDataModule

        return TaskDataModule.from_config(struct, self.cfg)

    @property
    def structs(self) -> dict[str, Any]:
        """Structs loaded so far in this run (task name -> TaskStruct)."""
        return dict(self._structs)

    def torch_generator(self) -> Any:
        """A ``torch.Generator`` seeded with the current step's seed (use it instead of global RNG)."""
        import torch

        gen = torch.Generator()
        gen.manual_seed(self.step_seed if self.step_seed is not None else int(self.cfg.seed))
        return gen

    def numpy_rng(self) -> np.random.Generator:
        """A ``numpy.random.Generator`` seeded with the current step's seed."""
        return np.random.default_rng(self.step_seed if self.step_seed is not None else int(self.cfg.seed))

    # -- running -----------------------------------------------------------------------------------
    def plan(self) -> list[Step]:
        """The steps from ``self.commands`` / ``self.params`` (after :meth:`create_routine`)."""
        if len(self.commands) != len(self.params):
            raise ConfigError(
                f"{type(self).__name__}.create_routine() appended {len(self.commands)} commands "
                f"but {len(self.params)} parameter lists"
            )
        steps = []
        for index, (command, params) in enumerate(zip(self.commands, self.params)):
            name = getattr(command, "__name__", None)
            if name is None or getattr(self, name, None) is None:
                raise ConfigError(f"command {command!r} of step {index} is not a method of {type(self).__name__}")
            steps.append(Step(index=index, command=name, params=list(params)))
        return steps

    def run(self) -> Any:
        """Lock the run, plan, execute pending steps with the configured executor, return :meth:`finish`."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.journal.acquire_lock()
        with run_warnings.collecting(self.run_dir) as self.run_warnings:
            try:
                return self._run_locked()
            finally:
                if self._executor is not None:
                    self._executor.close()
                self.journal.release_lock()

    def _run_locked(self) -> Any:
        if self.requires_existing_tasks and self.task_list:
            known = self.known_tasks()
            for task in self.task_list:
                if task not in known:
                    raise UnknownTaskError(self._unknown_task_message(task, known))
        finished = self._load_previous_state() if self.continuing else {}
        self._executor = self._build_executor()
        self._executor.prepare(self)  # e.g. Ray starts its workers in the background while the plan is made
        self.after_preparation_hook()
        self.create_routine()
        header = {"mode": str((self.cfg.get("mode") or {}).get("id")), "task_list": self.task_list,
                  "scheduler": f"{type(self).__module__}.{type(self).__qualname__}"}
        steps = self.journal.plan(self.plan(), header, self.continuing)
        pending = [s for s in steps if s.index not in finished]
        if self.continuing:
            # what a killed attempt of a pending step wrote goes, so the rerun does not leave it beside its own
            discard_created(self.fm.log_path, {s.index for s in pending}, self.resumed_keys)
        if steps and steps[-1].index in finished:
            self.last_result = finished[steps[-1].index]
        if finished:
            log.info("continuing %s: %d of %d steps already finished", self.run_dir, len(finished), len(steps))
        self._executor.execute(self, pending)
        self.before_finishing_hook()
        return self.finish()

    def summary_lines(self) -> list[str]:
        """The lines the CLI prints when the mode ends: run folder, artifacts made, warnings."""
        mode = str((self.cfg.get("mode") or {}).get("id"))
        return run_warnings.summary_lines(mode, self.run_dir, self.fm.created_paths(), self.run_warnings)

    def _build_executor(self) -> Any:
        from pandemonium.runs.executors import LocalExecutor, build_executor

        spec = self.cfg.get("executor")
        return build_executor(spec) if spec else LocalExecutor()

    def execute_step(self, step: Step) -> StepOutcome:
        """Seed, run one step and report the ``struct.paths`` it changed (used by executors)."""
        # deep copy: a step may mutate a nested value in place (paths["plots"].append(...))
        before = {name: copy.deepcopy(s.paths) for name, s in self._structs.items()}
        self.step_index = self.fm.step = step.index
        self.step_seed = step_seed(int(self.cfg.seed), step.index)
        seed_everything(self.step_seed)
        command = getattr(self, step.command, None)
        if command is None:
            raise ConfigError(f"step {step.index}: {type(self).__name__} has no command {step.command!r}")
        start = time.perf_counter()
        log.info("step %d: %s(%s)", step.index, step.command, ", ".join(map(repr, step.params)))
        result = command(*step.params)
        outcome = StepOutcome(index=step.index, result=result, seconds=time.perf_counter() - start)
        for name, struct in self._structs.items():
            old = before.get(name, {})
            added = {k: v for k, v in struct.paths.items() if k not in old or old[k] != v}
            removed = [k for k in old if k not in struct.paths]
            if added:
                outcome.paths_added[name] = added
            if removed:
                outcome.paths_removed[name] = removed
        return outcome

    def record_outcome(self, step: Step, outcome: StepOutcome) -> None:
        """Merge the paths of a finished step into the structs and persist them (executor barrier)."""
        for name, added in outcome.paths_added.items():
            struct = self.get_struct(name)
            struct.paths.update(added)
        for name, removed in outcome.paths_removed.items():
            struct = self.get_struct(name)
            for key in removed:
                struct.paths.pop(key, None)
        self.last_result = outcome.result
        self.journal.write_paths(self.structs_snapshot(), step)
        self.journal.append_step(step, outcome)

    @property
    def continue_changes(self) -> list[dict[str, Any]]:
        """Overrides changed by ``continue ... allow_changes=true``, oldest first (for artifacts' metadata)."""
        return read_continue_changes(self.run_dir)

    def structs_snapshot(self) -> dict[str, dict[str, Any]]:
        """JSON-encoded ``struct.paths`` of all tasks (what a remote worker needs to restore)."""
        return encode_paths({**self._restored_paths, **{n: s.paths for n, s in self._structs.items()}})

    def restore_paths(self, snapshot: dict[str, dict[str, Any]]) -> None:
        """Apply :meth:`structs_snapshot` output (paths are attached when a struct is loaded)."""
        self._restored_paths = decode_paths(snapshot)
        for name, struct in self._structs.items():
            struct.paths.update(self._restored_paths.get(name, {}))

    def _load_previous_state(self) -> dict[int, Any]:
        stored = self.journal.stored_paths()
        if stored is not None:
            self.restore_paths(stored)
        return self.journal.finished_steps()


def build_scheduler(cfg: DictConfig) -> AbstractBaseScheduler:
    """Instantiate ``cfg.mode.scheduler`` (``_target_`` + extra kwargs) with ``cfg=cfg``."""
    from hydra.utils import get_class

    mode = cfg.get("mode")
    if not mode or not mode.get("scheduler") or not mode.scheduler.get("_target_"):
        raise ConfigError("the mode config has no mode.scheduler._target_")
    target = str(mode.scheduler._target_)
    try:
        cls = get_class(target)
    except Exception as exc:  # hydra wraps ImportError/AttributeError in its own exceptions
        cause = exc.__cause__ or exc
        raise ConfigError(
            f"mode {mode.get('id')!r}: mode.scheduler._target_ {target!r} does not import "
            f"({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, AbstractBaseScheduler)):
        raise ConfigError(f"mode.scheduler._target_ {target!r} is not an AbstractBaseScheduler subclass")
    kwargs = {k: v for k, v in mode.scheduler.items() if not str(k).startswith("_")}
    return cls(cfg=cfg, **kwargs)
