"""What the steps of a mode share, declared in one place, and where stored artifacts are found.

A mode builds one :class:`ModeContext` from its scheduler and hands it to each step object
(``ModelSource``, ``PatchFit``, ``PatchEvaluation``, ``Transfer``, ``ReportBuilder``); a step uses
only the fields declared here, never attributes it hopes its scheduler has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pandemonium.attack.presets import AttackConfigError
from pandemonium.attack.spec import AttackSpec, AttackSpecs
from pandemonium.modes.steps import UNIVERSAL_TASK
from pandemonium.plain import to_plain
from pandemonium.runs import warnings as run_warnings
from pandemonium.runs.base import AbstractBaseScheduler
from pandemonium.runs.file_manager import FileManager
from pandemonium.runs.provenance import resolve_device

log = logging.getLogger(__name__)

__all__ = ["ModeContext", "check_reuse", "finish_tracking", "resume_mlflow_run", "start_tracking", "step_seed_of",
           "tracked"]


@dataclass
class ModeContext:
    """The run a step works in: config, files, tasks, device, attack specs and MLflow tracking.

    ``tracking`` is set once the mode has checked its input (it is ``None`` in a remote worker and
    when MLflow is off for a step run outside the mode's parent run).
    """

    cfg: DictConfig
    fm: FileManager
    run_dir: Path
    proj_path: Path
    task_list: list[str]
    get_struct: Callable[[str], Any]
    device: Any
    specs: AttackSpecs
    universal: bool = False
    num_examples: int = 4
    tracking: Any = None
    results: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, scheduler: AbstractBaseScheduler) -> ModeContext:
        """The context of a scheduler (its ``cfg``, ``fm``, ``run_dir``, ``task_list``, ``get_struct``)."""
        cfg = scheduler.cfg
        mode = cfg.get("mode") or {}
        return cls(cfg=cfg, fm=scheduler.fm, run_dir=scheduler.run_dir, proj_path=scheduler.proj_path,
                   task_list=list(scheduler.task_list), get_struct=scheduler.get_struct,
                   device=resolve_device(cfg.get("device")), specs=AttackSpecs(cfg.get("attack") or {}),
                   universal=bool(mode.get("universal", False)), num_examples=int(mode.get("num_examples", 4)))

    # ---------------------------------------------------------------- run settings
    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def fold(self) -> int:
        return int(OmegaConf.select(self.cfg, "fold", default=0) or 0)

    @property
    def data_dir(self) -> str:
        return str(self.cfg.data_dir)

    def spec(self, struct: Any) -> AttackSpec:
        """The task's attack spec (built once per task from the ``attack`` group); warns when its patch
        is too small to carry a pattern."""
        spec = self.specs(struct)
        _channels, height, width = spec.patch_shape
        run_warnings.check_patch_size(struct.name, height, width)
        return spec

    # ---------------------------------------------------------------- stored artifacts
    def newest(self, key: str, task_name: str, suffix: str | None = None) -> Path | None:
        found = [p for p in self.fm.list_artifacts(key, task_name) if suffix is None or p.suffix == suffix]
        return found[-1] if found else None

    def project_newest(self, key: str, file_prefix: str) -> Path | None:
        found = [p for p in self.fm.list_artifacts(key) if p.name.startswith(file_prefix)]
        return found[-1] if found else None

    def artifact(self, struct: Any, key: str, suffix: str | None = None, owner: str | None = None) -> Path | None:
        """The file under ``key`` attached to the struct in this run, else the newest of ``owner`` (the task)."""
        path = struct.paths.get(key)
        if path and Path(path).is_file():
            return Path(path)
        return self.newest(key, owner or struct.name, suffix)

    def model_path(self, struct: Any) -> Path | None:
        """The task's model: attached to the struct (this run / reuse) or the newest in this project."""
        path = struct.paths.get("models")
        return Path(path) if path else self.newest("models", struct.name)

    def patch_path(self, struct: Any) -> Path | None:
        """The task's patch: attached to the struct (this run / reuse) or the newest in this project."""
        path = struct.paths.get("patches")
        if path:
            return Path(path)
        if self.universal:
            found = self.newest("patches", UNIVERSAL_TASK, ".pt")
            if found is not None:
                return found
        return self.newest("patches", struct.name, ".pt")

    def stored_patches(self) -> dict[str, Path]:
        """patch id -> path: the newest patch of every task (and the universal one) in this project."""
        from pandemonium.runs.provenance import artifact_id

        found: dict[str, Path] = {}
        for task in self.task_list:
            path = self.patch_path(self.get_struct(task))
            if path is not None:
                found[artifact_id(path)] = path
        universal = self.newest("patches", UNIVERSAL_TASK, ".pt")
        if universal is not None:
            found[artifact_id(universal)] = universal
        return found


def check_reuse(ctx: ModeContext) -> None:
    """Every ``reuse.<key>=<project>`` finds something for at least one task of ``task_list``."""
    reuse = to_plain(ctx.cfg.get("reuse")) or {}
    for key, project in reuse.items():
        if not project:
            continue
        found = [t for t in ctx.task_list if ctx.fm.find_reusable(key, str(project), t) is not None]
        if key == "patches" and ctx.universal:
            found = found or ([UNIVERSAL_TASK] if ctx.fm.find_reusable(key, str(project), UNIVERSAL_TASK) else [])
        if not found:
            raise AttackConfigError(
                f"reuse.{key}={project}: project {project!r} has no {key} for any of the tasks "
                f"{', '.join(ctx.task_list)} (look in {ctx.proj_path.parent / str(project)})"
            )


@contextmanager
def tracked(ctx: ModeContext) -> Iterator[None]:
    """Marks the mode's MLflow parent run failed when the run raises (also on Ctrl-C)."""
    try:
        yield
    except BaseException:
        if ctx.tracking is not None:
            ctx.tracking.fail()
        raise


def start_tracking(ctx: ModeContext, scheduler: AbstractBaseScheduler) -> None:
    """Open (or, on ``continue``, resume) the mode's MLflow parent run."""
    from pandemonium.tracking.mode_run import ModeTracking

    ctx.tracking = ModeTracking.from_scheduler(scheduler)


def finish_tracking(ctx: ModeContext, headline: dict[str, float]) -> None:
    if ctx.tracking is not None:
        ctx.tracking.finish(headline)


def step_seed_of(scheduler: AbstractBaseScheduler) -> int:
    """The seed of the step being run (the run seed outside a step)."""
    return int(scheduler.step_seed if scheduler.step_seed is not None else scheduler.cfg.seed)


def resume_mlflow_run(trainer: Any, tracking: Any, run_name: str) -> str | None:
    """Hand the trainer's MLflow logger the run a killed attempt of this step left (closed as KILLED
    when ``continue`` resumed the parent run), so the rerun step resumes its own run and keeps the whole
    metric history instead of opening a second run of the same name. The run id, or ``None``."""
    from pandemonium.attack.training import MLflowLogger

    if tracking is None:
        return None
    run_id = tracking.resumable_child(run_name)
    logger = trainer.callback(MLflowLogger)
    if run_id is not None and logger is not None:
        logger.resume_run_id = run_id
        log.info("MLflow: %s resumes run %s of the interrupted attempt", run_name, run_id)
    return run_id
