"""The run journal: what a run directory holds so an interrupted run can be continued.

Files in the run directory:
    ``plan.json``     the plan (command name + params per step), written before the first step
    ``steps.jsonl``   one line per finished step, appended and fsynced right after the step
    ``structs.json``  ``struct.paths`` of every task, rewritten atomically after each step
    ``run.lock`` / ``run.pid``  the lock held while a process works on the run
    ``continue_changes.jsonl``  overrides a ``continue ... allow_changes=true`` changed

>>> import tempfile
>>> journal = RunJournal(tempfile.mkdtemp())
>>> journal.append_step(Step(0, "step_a", ["t"]), StepOutcome(index=0, result={"out": Path("x.pt")}))
>>> journal.finished_steps()
{0: {'out': PosixPath('x.pt')}}
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from pandemonium.errors import ConfigError, ContinueError, RunLockedError

PLAN_FILE = "plan.json"
STEPS_FILE = "steps.jsonl"
STRUCTS_FILE = "structs.json"
LOCK_FILE = "run.lock"
PID_FILE = "run.pid"
#: one line per ``continue`` that changed overrides with ``allow_changes=true`` (what changed, when)
CHANGES_FILE = "continue_changes.jsonl"


@dataclass(frozen=True)
class Step:
    """One atomic call of the plan: ``getattr(scheduler, command)(*params)``."""

    index: int
    command: str
    params: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "command": self.command, "params": list(self.params)}


@dataclass
class StepOutcome:
    """What a finished step hands back to the scheduler (across process borders for remote executors)."""

    index: int
    result: Any = None
    # task name -> {key: value} added or changed by the step; task name -> removed keys
    paths_added: dict[str, dict[str, Any]] = field(default_factory=dict)
    paths_removed: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


# -- JSON encoding of struct.paths (keeps Path objects Path after a restore) ---------------------
def encode_paths(value: Any) -> Any:
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, dict):
        return {str(k): encode_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_paths(v) for v in value]
    return value


def decode_paths(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__path__"}:
            return Path(value["__path__"])
        return {k: decode_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_paths(v) for v in value]
    return value


def _json_or_none(value: Any) -> Any:
    try:
        json.dumps(encode_paths(value))
        return encode_paths(value)
    except (TypeError, ValueError):
        return None


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _append_line(path: Path, record: Any) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def record_continue_changes(run_dir: str | os.PathLike, changes: dict[str, Any]) -> None:
    """Append to the run journal the overrides a ``continue`` changed (``{key: (old, new)}``)."""
    _append_line(Path(run_dir) / CHANGES_FILE, {"time": time.time(), "changes": {k: list(v) for k, v in changes.items()}})


def discard_created(log_path: str | os.PathLike, steps: set[int], keep_keys: Sequence[str] = ()) -> list[Path]:
    """Delete the files that the creation log ``log_path`` (FileManager's) records for ``steps``, with
    their sidecars (same stem: ``eval.parquet`` and ``eval.params.json``), and drop their records;
    artifact keys in ``keep_keys`` stay (state the rerun resumes from, e.g. a fit's checkpoints).
    For ``continue``: an unfinished step reruns and writes its files again under the same names."""
    from glob import escape

    log_path = Path(log_path)
    if not log_path.is_file():
        return []
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    discarded = [r for r in records if r.get("step") in steps and r.get("path") and r.get("key") not in keep_keys]
    stale = [Path(str(r["path"])) for r in discarded]
    for path in stale:
        for file in {path, *path.parent.glob(f"{escape(path.stem)}.*")}:
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
    if stale:
        kept = [r for r in records if r not in discarded]
        tmp = log_path.with_name(log_path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, log_path)
    return stale


def read_continue_changes(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(run_dir) / CHANGES_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class RunJournal:
    """Reads and writes the journal files of one run directory, and holds its lock."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._lock: FileLock | None = None

    # -- state -------------------------------------------------------------------------------------
    def stored_paths(self) -> dict[str, dict[str, Any]] | None:
        """The JSON-encoded ``struct.paths`` of the last finished step, ``None`` before the first."""
        structs_file = self.run_dir / STRUCTS_FILE
        if not structs_file.exists():
            return None
        try:
            return json.loads(structs_file.read_text())
        except json.JSONDecodeError as exc:
            raise ContinueError(f"continue: {structs_file} is corrupt ({exc})") from exc

    def finished_steps(self) -> dict[int, Any]:
        """Step index -> its (decoded) result, for every step the journal records as finished."""
        finished: dict[int, Any] = {}
        steps_file = self.run_dir / STEPS_FILE
        if steps_file.exists():
            for line in steps_file.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    # a line cut by a kill mid-write: that step counts as not finished
                    continue
                finished[int(record["index"])] = decode_paths(record.get("result"))
        return finished

    def write_paths(self, encoded: dict[str, dict[str, Any]], step: Step) -> None:
        """Store the encoded ``struct.paths`` of every task after ``step`` (atomically)."""
        for name, entries in encoded.items():
            for key, value in entries.items():
                try:
                    json.dumps(value)
                except (TypeError, ValueError) as exc:
                    raise ConfigError(
                        f"step {step.index} ({step.command}): struct.paths[{key!r}] of task {name!r} is not "
                        f"JSON-serialisable ({type(value).__name__}); store a path or plain value there"
                    ) from exc
        _write_json_atomic(self.run_dir / STRUCTS_FILE, encoded)

    def append_step(self, step: Step, outcome: StepOutcome) -> None:
        """Record ``step`` as finished (fsynced, so a kill right after it keeps the record)."""
        record = {**step.to_dict(), "seconds": round(outcome.seconds, 4), "result": _json_or_none(outcome.result)}
        _append_line(self.run_dir / STEPS_FILE, encode_paths(record))

    def stored_header(self) -> dict[str, Any]:
        """The stored plan's header (mode, task list, scheduler); empty when there is no plan yet."""
        plan_file = self.run_dir / PLAN_FILE
        if not plan_file.is_file():
            return {}
        try:
            stored = json.loads(plan_file.read_text())
        except ValueError as exc:
            raise ContinueError(f"continue: {plan_file} is corrupt ({exc})") from None
        return {k: v for k, v in stored.items() if k != "steps"} if isinstance(stored, dict) else {}

    def plan(self, steps: list[Step], header: dict[str, Any], continuing: bool) -> list[Step]:
        """Write the plan (``header`` + steps); when continuing, check it against the stored one and
        return the stored steps."""
        plan_file = self.run_dir / PLAN_FILE
        payload = {**header, "steps": [encode_paths(s.to_dict()) for s in steps]}
        if continuing and plan_file.exists():
            stored = json.loads(plan_file.read_text())
            if stored.get("steps") != payload["steps"]:
                old = [decode_paths(s) for s in stored.get("steps", [])]
                new = [s.to_dict() for s in steps]
                diff = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
                raise ContinueError(
                    f"continue={self.run_dir}: the plan differs from the stored one at step {diff} "
                    f"(stored: {old[diff] if diff < len(old) else 'end'}, now: {new[diff] if diff < len(new) else 'end'}); "
                    "use the same mode, task_list and subroutines as the interrupted run"
                )
            return [Step(**decode_paths(s)) for s in stored["steps"]]
        _write_json_atomic(plan_file, payload)
        return steps

    # -- lock --------------------------------------------------------------------------------------
    def _take_lock(self) -> FileLock:
        lock = FileLock(str(self.run_dir / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            pid_file = self.run_dir / PID_FILE
            pid = pid_file.read_text().strip() if pid_file.exists() else "unknown"
            raise RunLockedError(
                f"run {self.run_dir} is locked by another process (pid {pid}); "
                "wait for it to finish or stop it before continuing this run"
            ) from None
        return lock

    def acquire_lock(self) -> None:
        """Lock the run for this process, or :class:`RunLockedError` naming the holder's pid."""
        self._lock = self._take_lock()
        (self.run_dir / PID_FILE).write_text(str(os.getpid()))

    def check_unlocked(self) -> None:
        """:class:`RunLockedError` when another process holds the run (checked before a ``continue``)."""
        if (self.run_dir / LOCK_FILE).exists():
            self._take_lock().release()

    def release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                (self.run_dir / PID_FILE).unlink()
            self._lock.release()
            self._lock = None
