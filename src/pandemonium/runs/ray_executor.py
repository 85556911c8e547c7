"""``executor=ray``: the independent steps of a group run as Ray tasks, on a local Ray or a cluster.

Each step runs in a Ray worker through :func:`~pandemonium.runs.executors.execute_step_isolated` (a
fresh scheduler built from the resolved config, the driver's ``struct.paths`` restored) with the
resources the step declares (:func:`~pandemonium.runs.executors.step_resources`, the executor's
``step_resources`` default and ``commands`` overrides). Outcomes come back to the driver as they
finish; the driver alone writes ``steps.jsonl`` / ``structs.json``. A failed step (an exception, or
its worker killed) is reported with its task name and the worker's traceback once the rest of its
group finished; the finished steps are recorded, so ``continue=<run dir>`` reruns only what failed.

Seeds are those of the local executor (``(seed, step index)``), so both give the same artifacts.
Artifacts are written under ``out_dir`` by the workers: on a cluster that folder must be shared
(the same path readable and writable on every node).

Ray's start is hidden behind the driver's own preparation: :meth:`RayExecutor.prepare` (called by the
scheduler before it plans) starts ``ray.init`` in a background thread and then one no-op task per CPU
of a local Ray that imports the modules a step needs (the scheduler's module and its
``worker_imports``), so the workers start and import while the driver prepares; ``start_early=false``
turns it off.

Bad input is refused before any step starts: an address nobody answers on, a step needing more
GPUs / CPUs / memory than the whole cluster has (``device=cuda`` counts as one GPU per step).

>>> RayExecutor(num_cpus=2).address is None
True
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from pandemonium.errors import ConfigError
from pandemonium.plain import to_plain
from pandemonium.runs.executors import (
    RESOURCES_ATTR,
    Executor,
    StepFailedError,
    execute_step_isolated,
    step_task_name,
)

if TYPE_CHECKING:
    from pandemonium.runs.base import AbstractBaseScheduler, Step, StepOutcome

log = logging.getLogger(__name__)

__all__ = ["RayExecutor", "StepFailure", "match_threads_to_cpus", "run_step_in_worker", "warm_worker"]

RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory")
# what every step of a built-in mode imports in its worker (lightning, through the datamodule, is most of it)
WORKER_IMPORTS = ("pandemonium.runs.executors", "pandemonium.tasks.datamodule", "pandemonium.attack.training",
                  "pandemonium.models.storage")
# what Ray's cluster_resources() calls the same quantities
CLUSTER_KEYS = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}


@dataclass
class StepFailure:
    """A step that raised in its worker: the exception's type, message and the worker's traceback."""

    index: int
    error: str
    traceback: str
    exit_code: int = 1


def run_step_in_worker(cfg: dict[str, Any], snapshot: dict[str, Any], step: dict[str, Any],
                       run_dir: str) -> StepOutcome | StepFailure:
    """The body of a Ray task: one step, its exception turned into a :class:`StepFailure` (plain data,
    so an exception class the driver cannot unpickle never hides the real error)."""
    from pandemonium.allocator import tune_allocator

    tune_allocator()  # what the CLI does for the driver: a worker runs the same patch fits
    match_threads_to_cpus()
    try:
        return execute_step_isolated(cfg, snapshot, step, run_dir)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the driver, which reports it
        return StepFailure(index=int(step["index"]), error=f"{type(exc).__name__}: {exc}",
                           traceback=traceback.format_exc(), exit_code=int(getattr(exc, "exit_code", 1)))


def match_threads_to_cpus() -> int:
    """Run torch on as many threads as CPUs the current Ray task holds (at least one) and return that.

    Ray sets ``OMP_NUM_THREADS`` for a worker when it starts, but a worker lives on across tasks, and
    torch sizes its pool once: a worker that ran a 1-CPU step would run a later 4-CPU step on one
    thread, and more threads than CPUs held would oversubscribe the cores other steps hold.
    """
    import ray
    import torch

    cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1) or 1)
    threads = max(1, int(cpus))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def warm_worker(modules: list[str]) -> float:
    """The body of a warm-up task: import ``modules`` (a missing one is skipped: the step that needs it
    reports it) and return the seconds it took."""
    import importlib

    start = time.perf_counter()
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - warming up must never fail a run
            log.debug("warm-up import of %s failed: %s", name, exc)
    return time.perf_counter() - start


class RayExecutor(Executor):
    """Runs the steps of each group in parallel as Ray tasks.

    Args:
        address: an existing cluster (``host:port``, ``ray://host:port`` or ``auto``); ``None`` starts a
            local Ray on demand (or uses the one this process already started).
        num_cpus / num_gpus: size of the local Ray (``None``: Ray's own count).
        step_resources: what one step needs unless its command declares otherwise.
        commands: per-command overrides, e.g. ``{attack_task: {num_gpus: 1}}``.
        max_retries: Ray retries of a step whose worker died (0: report it as failed).
        shutdown: stop a Ray this executor started once the plan ran.
        runtime_env: passed to ``ray.init`` (the driver's ``sys.path`` is added to ``PYTHONPATH`` of a
            local Ray so that workers import the same schedulers).
        start_early: start Ray and warm its workers in the background while the driver prepares the
            plan (:meth:`prepare`); ``False``: start Ray when the first step is due.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                 step_resources: Mapping[str, Any] | None = None,
                 commands: Mapping[str, Mapping[str, Any]] | None = None, max_retries: int = 0,
                 shutdown: bool = True, runtime_env: Mapping[str, Any] | None = None,
                 connect_timeout_s: float = 10.0, start_early: bool = True) -> None:
        self.address = str(address) if address not in (None, "") else None
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.step_defaults = _check_resources(dict(to_plain(step_resources) or {"num_cpus": 1}), "executor.step_resources")
        self.commands = {str(k): _check_resources(dict(to_plain(v) or {}), f"executor.commands.{k}")
                         for k, v in (to_plain(commands) or {}).items()}
        self.max_retries = int(max_retries)
        self.shutdown = bool(shutdown)
        self.runtime_env = dict(to_plain(runtime_env) or {})
        self.connect_timeout_s = float(connect_timeout_s)
        self.start_early = bool(start_early)
        self._started = False
        self._starter: _BackgroundStart | None = None
        self.warm_tasks = 0  # warm-up tasks started by the background start
        self.warm_seconds: list[float] = []  # what each of them took, for those done by close()

    # -- connection ---------------------------------------------------------------------------------
    def prepare(self, scheduler: AbstractBaseScheduler) -> None:
        """Start Ray in the background (see the module docstring); an address nobody answers on is
        refused here, at once."""
        import ray

        if not self.start_early or self._starter is not None or ray.is_initialized():
            return
        if self.address is not None:
            self.check_address(self.address)
        modules = [*WORKER_IMPORTS, type(scheduler).__module__, *scheduler.worker_imports]
        self._starter = _BackgroundStart(self, list(dict.fromkeys(modules)))

    def connect(self) -> None:
        """Join the cluster at ``address`` or start a local Ray; one clear error when that fails."""
        import ray

        if self._starter is not None:
            self._starter.wait()  # re-raises what the background start raised
            return
        if ray.is_initialized():
            return
        self._init()

    def _init(self) -> None:
        import ray

        if self.address is not None:
            self.check_address(self.address)
            try:
                ray.init(address=self.address, runtime_env=self.runtime_env or None, log_to_driver=True)
            except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, gRPC errors alike
                raise ConfigError(f"executor.address={self.address}: cannot join the Ray cluster "
                                  f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
            return
        env = dict(self.runtime_env)
        env_vars = dict(env.get("env_vars") or {})
        # workers are fresh interpreters: give them the driver's import path (test or plugin schedulers)
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env_vars.setdefault("PYTHONPATH", os.pathsep.join(paths))
        env["env_vars"] = env_vars
        ray.init(num_cpus=self.num_cpus, num_gpus=self.num_gpus, include_dashboard=False,
                 runtime_env=env, log_to_driver=True)
        self._started = True

    def check_address(self, address: str) -> None:
        """A clear error when nothing listens at a ``host:port`` address (before Ray's long retries)."""
        if address == "auto":
            return
        host_port = address.split("://", 1)[-1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"executor.address={address!r}: expected host:port, ray://host:port or auto")
        try:
            with socket.create_connection((host, int(port)), timeout=self.connect_timeout_s):
                pass
        except OSError as exc:
            raise ConfigError(f"executor.address={address}: no Ray cluster answers there ({exc}); "
                              "start one with `ray start --head` or drop executor.address for a local Ray") from None

    def close(self) -> None:
        import ray

        starter, self._starter = self._starter, None
        if starter is not None:
            starter.wait(raise_error=False)  # a start still under way finishes before Ray is stopped
            self.warm_tasks, self.warm_seconds = len(starter.warm_refs), starter.warm_seconds()
        kept = self._started and not self.shutdown
        if self._started and self.shutdown and ray.is_initialized():
            ray.shutdown()
        self._started = False
        if starter is not None and not kept:  # a local Ray kept for later runs lives as long as its thread
            starter.release()

    # -- resources ------------------------------------------------------------------------------------
    def resources_for(self, scheduler: AbstractBaseScheduler, step: Step) -> dict[str, Any]:
        """Executor default < ``device=cuda`` (one GPU) < the command's declaration < ``commands`` config."""
        out = dict(self.step_defaults)
        device = str(scheduler.cfg.get("device") or "")
        if device.startswith("cuda"):
            out.setdefault("num_gpus", 1)
        command = getattr(type(scheduler), step.command, None)
        out.update(getattr(command, RESOURCES_ATTR, {}) or {})
        out.update(self.commands.get(step.command, {}))
        return {k: v for k, v in out.items() if v is not None}

    def check_resources(self, scheduler: AbstractBaseScheduler, steps: list[Step]) -> None:
        """Refuse a step that no node of the cluster could ever run (it would wait forever)."""
        import ray

        total = ray.cluster_resources()
        for step in steps:
            need = self.resources_for(scheduler, step)
            for key, value in need.items():
                have = float(total.get(CLUSTER_KEYS[key], 0))
                if float(value) > have:
                    unit = " bytes" if key == "memory" else ""
                    raise ConfigError(
                        f"step {step.index} ({step.command} of {step_task_name(scheduler, step)!r}) needs "
                        f"{key}={value}{unit} but the Ray cluster has {have:g} in all"
                        + ("; set device=cpu or join a cluster with GPUs" if key == "num_gpus" else "")
                    )

    # -- running ------------------------------------------------------------------------------------
    def execute(self, scheduler: AbstractBaseScheduler, steps: list[Step]) -> None:
        if not steps:
            return
        self.connect()
        try:
            self.check_resources(scheduler, steps)
            super().execute(scheduler, steps)
        finally:
            self.close()

    def run_group(self, scheduler: AbstractBaseScheduler, group: list[Step]) -> Iterator[StepOutcome]:
        import ray

        cfg = OmegaConf.to_container(scheduler.cfg, resolve=True)
        snapshot = scheduler.structs_snapshot()
        run_dir = str(scheduler.run_dir)
        cfg_ref = ray.put(cfg)
        remote = _remote_step()
        pending: dict[Any, Step] = {}
        for step in group:
            options = {"max_retries": self.max_retries, **self.resources_for(scheduler, step)}
            ref = remote.options(**options).remote(cfg_ref, snapshot, step.to_dict(), run_dir)
            pending[ref] = step
        failures: list[tuple[Step, str, str, int]] = []
        start = time.perf_counter()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            step = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a dead worker, an object lost with its node
                failures.append((step, f"{type(exc).__name__}: worker lost", str(exc), 1))
                continue
            if isinstance(result, StepFailure):
                failures.append((step, result.error, result.traceback, result.exit_code))
                continue
            yield result
        log.debug("ray group %s: %d steps in %.1fs", group[0].command, len(group), time.perf_counter() - start)
        if failures:
            raise _failed(scheduler, failures)


@functools.cache
def _remote_step() -> Any:
    """``run_step_in_worker`` as a Ray remote function, made once per process (Ray exports a new
    remote function to the cluster each time one is made)."""
    import ray

    return ray.remote(run_step_in_worker)


class _BackgroundStart:
    """``ray.init`` in a thread, then one warm-up task per CPU of a local Ray.

    The thread lives until :meth:`release` (after ``ray.shutdown``): Ray ties its local processes (GCS,
    raylet) to the *thread* that started them (``PR_SET_PDEATHSIG``), so they would die with it.
    """

    def __init__(self, executor: RayExecutor, modules: list[str]) -> None:
        self.executor, self.modules = executor, modules
        self.error: BaseException | None = None
        self.warm_refs: list[Any] = []
        self._up, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="pandemonium-ray-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with _quiet_thread_warning():
                self.executor._init()
            if self.executor._started:  # a local Ray: warm its workers (a cluster's run on as they are)
                import ray

                remote = _remote_warm()
                cpus = int(ray.cluster_resources().get("CPU", 1))
                self.warm_refs = [remote.remote(self.modules) for _ in range(max(1, cpus))]
        except BaseException as exc:  # noqa: BLE001 - handed to the driver's thread by wait()
            self.error = exc
        finally:
            self._up.set()
        self._stop.wait()

    def wait(self, raise_error: bool = True) -> None:
        self._up.wait()
        if raise_error and self.error is not None:
            raise self.error

    def warm_seconds(self) -> list[float]:
        import ray

        if not self.warm_refs or not ray.is_initialized():
            return []
        ready, _ = ray.wait(self.warm_refs, num_returns=len(self.warm_refs), timeout=0)
        return [float(ray.get(ref)) for ref in ready]

    def release(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def _quiet_thread_warning() -> Iterator[None]:
    """Ray warns that it cannot set its SIGTERM handler outside the main thread; the driver's default
    SIGTERM still ends it, and Ray's processes die with the starting thread."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "SIGTERM handler is not set" not in record.getMessage()

    target = logging.getLogger("ray._private.worker")
    dropper = _Drop()
    target.addFilter(dropper)
    try:
        yield
    finally:
        target.removeFilter(dropper)


@functools.cache
def _remote_warm() -> Any:
    """``warm_worker`` as a Ray remote function holding one CPU, made once per process."""
    import ray

    return ray.remote(num_cpus=1)(warm_worker)


def _failed(scheduler: AbstractBaseScheduler, failures: list[tuple[Step, str, str, int]]) -> StepFailedError:
    lines = [f"{len(failures)} step(s) failed in Ray workers (finished steps are recorded; "
             f"`continue={scheduler.run_dir}` reruns only the failed ones):"]
    for step, error, trace, _code in sorted(failures, key=lambda f: f[0].index):
        lines.append(f"- step {step.index} {step.command} of task {step_task_name(scheduler, step)!r}: {error}")
        lines.append("  worker traceback:\n" + "\n".join("    " + t for t in trace.rstrip().splitlines()))
    err = StepFailedError("\n".join(lines))
    codes = {f[3] for f in failures}
    # all failures are bad input (exit 2) -> say so; anything else is a failure during work
    err.exit_code = 2 if codes == {2} else 1
    return err


def _check_resources(spec: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in spec.items():
        if key not in RESOURCE_KEYS:
            raise ConfigError(f"{where}: unknown resource {key!r} (known: {', '.join(RESOURCE_KEYS)})")
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"{where}.{key}: expected a number >= 0, got {value!r}")
    return spec
