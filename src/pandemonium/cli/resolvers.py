"""OmegaConf resolvers of the config tree (run directories); registered by the CLI and the fixtures."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# one new run directory per process and (out_dir, proj): Hydra resolves hydra.run.dir several times
_NEW_RUN_DIRS: dict[tuple[str, str, str], str] = {}


def _runs_root(out_dir: str, proj: str) -> Path:
    from pandemonium.runs.file_manager import RUNS_DIR_NAME

    return Path(str(out_dir)).expanduser().absolute() / str(proj) / RUNS_DIR_NAME


def run_dir(out_dir: str, proj: str, cont: str | None = None) -> str:
    """``hydra.run.dir``: the run being continued (``continue=latest|DIR``) or a new timestamped one.

    An unresolvable ``continue`` yields a new directory; the scheduler then reports the error."""
    from pandemonium.runs.file_manager import find_run_dir, run_stamp

    if cont not in (None, "", "None", "null"):
        found = find_run_dir(out_dir, str(proj), str(cont))
        if found is not None:
            return str(found)
    key = ("run", str(out_dir), str(proj))
    if key not in _NEW_RUN_DIRS:
        _NEW_RUN_DIRS[key] = str(_runs_root(out_dir, proj) / run_stamp())
    return _NEW_RUN_DIRS[key]


def sweep_dir(out_dir: str, proj: str) -> str:
    """``hydra.sweep.dir``: ``<out_dir>/<proj>/runs/<timestamp>_multirun`` (jobs in numbered subdirs)."""
    from pandemonium.runs.file_manager import run_stamp

    key = ("sweep", str(out_dir), str(proj))
    if key not in _NEW_RUN_DIRS:
        _NEW_RUN_DIRS[key] = str(_runs_root(out_dir, proj) / f"{run_stamp()}_multirun")
    return _NEW_RUN_DIRS[key]


def output_subdir(cont: str | None = None) -> str:
    """``hydra.output_subdir``: ``.hydra``; a continued run keeps the original one and writes its own
    composed config to ``.hydra_continue_<timestamp>``."""
    from pandemonium.runs.file_manager import run_stamp

    if cont in (None, "", "None", "null"):
        return ".hydra"
    key = ("subdir", "", "")
    if key not in _NEW_RUN_DIRS:
        _NEW_RUN_DIRS[key] = f".hydra_continue_{run_stamp()}"
    return _NEW_RUN_DIRS[key]


def register_resolvers() -> None:
    """Idempotent."""
    if not OmegaConf.has_resolver("pm_run_dir"):
        OmegaConf.register_new_resolver("pm_run_dir", run_dir)
    if not OmegaConf.has_resolver("pm_output_subdir"):
        OmegaConf.register_new_resolver("pm_output_subdir", output_subdir)
    if not OmegaConf.has_resolver("pm_sweep_dir"):
        OmegaConf.register_new_resolver("pm_sweep_dir", sweep_dir)


def forget_run_dirs() -> None:
    """Let the next CLI call in this process get fresh run directories (tests calling main() twice)."""
    _NEW_RUN_DIRS.clear()
