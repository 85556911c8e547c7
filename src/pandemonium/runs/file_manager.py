"""Where artifacts go: one registry of artifact keys -> path templates, numbered files, a creation log.

Layout (``proj_path = <out_dir>/<proj>``)::

    <proj_path>/MODELS/<task>/models_0001.pt          # key "models" (registered)
    <proj_path>/FOO/<task>/foo_0001.pkl               # key "foo" (not registered: default template)
    <proj_path>/TMP/...                               # temporary files, removed by `pandemonium clean`
    <proj_path>/runs/<timestamp>/artifacts.jsonl      # one line per path handed out in that run

>>> fm = FileManager(proj_path="/tmp/res/demo", run_path="/tmp/res/demo/runs/x")  # doctest: +SKIP
>>> fm.construct_saving_path(obj={"a": 1}, key="eval_tables", task_name="shapes_cls")  # doctest: +SKIP
PosixPath('/tmp/res/demo/EVAL_TABLES/shapes_cls/eval_tables_0001.json')
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pandemonium.errors import ConfigError

# key -> template; placeholders: {proj_path}, {run_path}, {task_name}, {file_name}, {key}.
# A "{task_name}/" component is dropped when no task is given.
DEFAULT_ASSIGNMENTS: dict[str, str] = {
    "models": "{proj_path}/MODELS/{task_name}/{file_name}",
    "patches": "{proj_path}/PATCHES/{task_name}/{file_name}",
    "patch_checkpoints": "{proj_path}/PATCH_CHECKPOINTS/{task_name}/{file_name}",
    "eval_tables": "{proj_path}/EVAL_TABLES/{task_name}/{file_name}",
    "pipelines": "{proj_path}/PIPELINES/{task_name}/{file_name}",
    "predictions": "{proj_path}/PREDICTIONS/{task_name}/{file_name}",
    "reports": "{proj_path}/REPORTS/{task_name}/{file_name}",
    "plots": "{proj_path}/PLOTS/{task_name}/{file_name}",
    "transfer": "{proj_path}/TRANSFER/{task_name}/{file_name}",
    "sample_grids": "{run_path}/sample_grids/{task_name}/{file_name}",
}
# keys whose files `clean` may delete (intermediates); everything else is a result and is kept
INTERMEDIATE_KEYS: frozenset[str] = frozenset({"patch_checkpoints"})
# results that no clean-up ever deletes
PROTECTED_KEYS: frozenset[str] = frozenset({"models", "patches", "reports"})
UNREGISTERED_TEMPLATE = "{proj_path}/{KEY}/{task_name}/{file_name}"
TMP_DIR_NAME = "TMP"
ARTIFACT_LOG_NAME = "artifacts.jsonl"

_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_\-]+$")
_NUMBERED = re.compile(r"^(?P<stem>.+)_(?P<num>\d{4,})$")


def validate_name(name: str, what: str) -> str:
    """Reject names that would escape their folder (``a/b``, ``..``, empty)."""
    if not isinstance(name, str) or not name or name in {".", ".."} or any(
        sep in name for sep in ("/", "\\", os.sep, "\0")
    ):
        raise ConfigError(f"invalid {what} {name!r}: it must be a plain name without path separators")
    return name


def infer_suffix(obj: Any) -> str:
    """File extension for an object about to be stored (by type, without importing heavy libraries)."""
    if isinstance(obj, (str, os.PathLike)) and Path(obj).suffix:
        return Path(obj).suffix
    module = type(obj).__module__.split(".")[0]
    name = type(obj).__name__
    if module == "torch" or (isinstance(obj, dict) and obj and all(
        type(v).__module__.split(".")[0] == "torch" for v in obj.values()
    )):
        return ".pt"
    if hasattr(obj, "state_dict") and hasattr(obj, "parameters"):
        return ".pt"  # a user nn.Module subclass lives in the user's module
    if module == "pandas":
        return ".csv"
    if module == "numpy":
        return ".npy"
    if module == "matplotlib" or module == "PIL" or name == "Figure":
        return ".png"
    if isinstance(obj, (dict, list, tuple, int, float, bool)) or obj is None:
        return ".json"
    if isinstance(obj, str):
        return ".txt"
    return ".pkl"


class _HybridMethod:
    """Bound to the instance when called on one, to the class otherwise (see ``add_assignment_path``)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj: Any, cls: type) -> Callable[..., Any]:
        return functools.partial(self.func, obj if obj is not None else cls)


class FileManager:
    """Hands out artifact paths. Numbered files are reserved atomically, so they are never overwritten.

    Args:
        proj_path: ``<out_dir>/<proj>``; results that outlive a run go below it.
        run_path: the run directory (holds the creation log).
        assignments: extra key -> template entries for this instance only.
        reuse: ``{key: project}``; see :meth:`find_reusable`.
    """

    # class-wide registry (built-ins + plugins); instances copy it when they are created
    _class_assignments: dict[str, str] = dict(DEFAULT_ASSIGNMENTS)

    def __init__(
        self,
        proj_path: str | os.PathLike,
        run_path: str | os.PathLike,
        assignments: dict[str, str] | None = None,
        reuse: dict[str, str | None] | None = None,
    ) -> None:
        self.proj_path = Path(proj_path).absolute()
        self.run_path = Path(run_path).absolute()
        self.assignments: dict[str, str] = dict(type(self)._class_assignments)
        for key, template in (assignments or {}).items():
            self._check_assignment(key, template)
            self.assignments[key] = template
        self.reuse = {k: v for k, v in (reuse or {}).items() if v}
        self.log_path = self.run_path / ARTIFACT_LOG_NAME
        self.tmp_path = self.proj_path / TMP_DIR_NAME
        #: index of the step being run (set by the scheduler): each creation record names its step, so
        #: `continue` can remove what a killed attempt of an unfinished step left
        self.step: int | None = None

    # -- registry --------------------------------------------------------------------------------
    @staticmethod
    def _check_assignment(key: str, template: str) -> None:
        if not isinstance(key, str) or not _KEY_PATTERN.match(key):
            raise ConfigError(f"invalid artifact key {key!r}: use letters, digits, '_' or '-'")
        if "{file_name}" not in template or not (
            template.startswith("{proj_path}") or template.startswith("{run_path}")
        ):
            raise ConfigError(
                f"invalid template {template!r} for artifact key {key!r}: it must start with "
                "'{proj_path}' or '{run_path}' and contain '{file_name}'"
            )

    @_HybridMethod
    def add_assignment_path(target: Any, key: str, template: str) -> None:  # noqa: N805
        """Register ``key -> template``; on the class for all future managers, on an instance for it alone.

        >>> FileManager.add_assignment_path("heatmaps", "{proj_path}/HEATMAPS/{task_name}/{file_name}")
        """
        FileManager._check_assignment(key, template)
        if isinstance(target, type):
            target._class_assignments = {**target._class_assignments, key: template}
        else:
            target.assignments[key] = template

    @classmethod
    def remove_assignment_path(cls, key: str) -> None:
        """Undo a class-wide :meth:`add_assignment_path` (tests and plugin unloading)."""
        cls._class_assignments = {k: v for k, v in cls._class_assignments.items() if k != key}

    def template_for(self, key: str) -> str:
        """The template of ``key``; unregistered keys get ``<proj_path>/<KEY>/<task>/<file>``."""
        validate_name(key, "artifact key")
        if key in self.assignments:
            return self.assignments[key]
        return UNREGISTERED_TEMPLATE.replace("{KEY}", key.upper())

    def _format(self, template: str, key: str, task_name: str | None, file_name: str,
                proj_path: Path | None = None, run_path: Path | str | None = None) -> Path:
        if task_name is None:
            template = template.replace("{task_name}/", "").replace("/{task_name}", "")
        return Path(
            template.format(
                proj_path=str(proj_path or self.proj_path),
                run_path=str(run_path or self.run_path),
                task_name=task_name,
                file_name=file_name,
                key=key,
            )
        )

    # -- paths -----------------------------------------------------------------------------------
    def construct_saving_path(
        self, obj: Any, key: str, task_name: str | None = None, file_name: str | None = None
    ) -> Path:
        """A fresh path for storing ``obj`` under artifact ``key`` (and ``task_name``).

        Without ``file_name`` the file is ``<key>_<NNNN><ext>`` (ext from the type of ``obj``,
        NNNN one above the highest existing number). With ``file_name`` that name is used unless
        it exists, then ``<stem>_<NNNN><ext>``. The returned file is created empty (reserved), so
        no two calls (not even from two processes) return the same path; the caller overwrites it.
        """
        if task_name is not None:
            validate_name(task_name, "task name")
        if file_name is not None:
            validate_name(file_name, "file name")
        template = self.template_for(key)
        if file_name is None:
            stem, suffix = key, infer_suffix(obj)
        else:
            stem, suffix = Path(file_name).stem, Path(file_name).suffix
        folder = self._format(template, key, task_name, "__FILE__").parent
        folder.mkdir(parents=True, exist_ok=True)
        path = self._reserve(folder, stem, suffix, numbered=file_name is None)
        self._log(key=key, task_name=task_name, path=path)
        return path

    @staticmethod
    def _reserve(folder: Path, stem: str, suffix: str, numbered: bool) -> Path:
        if not numbered:
            candidate = folder / f"{stem}{suffix}"
            try:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return candidate
            except FileExistsError:
                pass
        pattern = re.compile(rf"^{re.escape(stem)}_(\d{{4,}}){re.escape(suffix)}$")
        while True:
            numbers = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
            candidate = folder / f"{stem}_{max(numbers, default=0) + 1:04d}{suffix}"
            try:
                os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return candidate
            except FileExistsError:  # another process won the race; take the next number
                continue

    def get_tmp_path(self, name: str, task_name: str | None = None) -> Path:
        """A path below ``<proj_path>/TMP`` (deleted by ``pandemonium clean``); parent is created."""
        validate_name(name, "tmp file name")
        folder = self.tmp_path / task_name if task_name else self.tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        return folder / name

    def _log(self, **record: Any) -> None:
        self.run_path.mkdir(parents=True, exist_ok=True)
        record = {"time": time.time(), "step": self.step,
                  **{k: str(v) if isinstance(v, Path) else v for k, v in record.items()}}
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def created_paths(self) -> list[dict[str, Any]]:
        """The records of the creation log of this run (key, task_name, path, time)."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    # -- stored artifacts and reuse ----------------------------------------------------------------
    def list_artifacts(self, key: str, task_name: str | None = None,
                       proj_path: Path | None = None) -> list[Path]:
        """Existing non-empty files of ``key`` (and task), oldest first (by number, then mtime)."""
        template = self.template_for(key)
        pattern = self._format(template, key, task_name, "*", proj_path=proj_path, run_path="*")
        root = Path(pattern.anchor)
        found = [p for p in root.glob(str(pattern.relative_to(root))) if p.is_file() and p.stat().st_size > 0]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    def find_reusable(self, key: str, project: str, task_name: str | None = None) -> Path | None:
        """The newest artifact of ``key`` for ``task_name`` in the earlier project ``project``."""
        validate_name(project, "project")
        other = self.proj_path.parent / project
        if not other.is_dir():
            known = sorted(p.name for p in self.proj_path.parent.iterdir() if p.is_dir()) \
                if self.proj_path.parent.is_dir() else []
            raise ConfigError(
                f"reuse.{key}={project}: no project {project!r} in {self.proj_path.parent} "
                f"(known projects: {', '.join(known) or 'none'})"
            )
        found = self.list_artifacts(key, task_name, proj_path=other)
        return found[-1] if found else None

    def attach_reused(self, paths: dict[str, Any], task_name: str) -> dict[str, Any]:
        """Fill ``paths[key]`` for every ``reuse.<key>=<project>`` that has an artifact for the task."""
        for key, project in self.reuse.items():
            found = self.find_reusable(key, project, task_name)
            if found is not None:
                paths[key] = found
        return paths

    def iter_keys(self) -> Iterable[str]:
        return iter(self.assignments)


# -- run directories: <out_dir>/<proj>/runs/<timestamp> ---------------------------------------------
RUNS_DIR_NAME = "runs"
_STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"


def run_stamp() -> str:
    """``2026-11-21_12-00-00_123456``: sortable, unique enough for runs started by hand or in tests."""
    now = time.time()
    return time.strftime(_STAMP_FORMAT, time.localtime(now)) + f"_{int((now % 1) * 1e6):06d}"


def allocate_run_dir(out_dir: str | os.PathLike, proj: str) -> Path:
    """Create and return a new, unused run directory of ``proj``."""
    runs = Path(out_dir).absolute() / proj / RUNS_DIR_NAME
    runs.mkdir(parents=True, exist_ok=True)
    while True:
        candidate = runs / run_stamp()
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            time.sleep(1e-3)


def run_mode_of(run_dir: Path, marker: str = "plan.json") -> str | None:
    """The mode that wrote ``run_dir`` (``mode`` of its plan), or None when unreadable."""
    try:
        return str(json.loads((run_dir / marker).read_text(encoding="utf-8")).get("mode"))
    except (OSError, ValueError, AttributeError):
        return None


def run_dirs_of(out_dir: str | os.PathLike, proj: str, mode: str | None = None,
                marker: str = "plan.json") -> list[Path]:
    """Run directories of ``proj`` holding ``marker`` (of ``mode`` when given), oldest first."""
    runs = Path(out_dir).absolute() / proj / RUNS_DIR_NAME
    if not runs.is_dir():
        return []
    found = sorted(p for p in runs.iterdir() if (p / marker).is_file())
    return [p for p in found if mode is None or run_mode_of(p, marker) == mode]


def find_run_dir(out_dir: str | os.PathLike, proj: str, spec: str, marker: str = "plan.json",
                 mode: str | None = None) -> Path | None:
    """The run directory that ``continue=<spec>`` names: ``latest`` (newest run of ``proj`` holding
    ``marker``, of ``mode`` when given), a path, or a run name below ``<out_dir>/<proj>/runs``.
    None when there is none."""
    runs = Path(out_dir).absolute() / proj / RUNS_DIR_NAME
    if spec == "latest":
        candidates = run_dirs_of(out_dir, proj, mode=mode, marker=marker)
        return candidates[-1] if candidates else None
    for candidate in (Path(spec).expanduser(), runs / spec):
        if (candidate / marker).is_file():
            return candidate.absolute()
    return None
