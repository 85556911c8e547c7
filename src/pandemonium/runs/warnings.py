"""Warnings for runs whose numbers mean little, and the short summary every mode ends with.

A step calls a check; a failing check logs a WARNING and is kept for the end-of-mode summary (and the
report, which reads :func:`collected`)::

    from pandemonium.runs import warnings as run_warnings

    run_warnings.check_model_quality("digits", accuracy=0.11, num_classes=10)
    # WARNING  task 'digits': model accuracy 0.110 is at chance level (1/10 = 0.100) ...
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("pandemonium.warnings")

#: a model within this much of the chance rate (absolute accuracy) counts as "at chance level"
CHANCE_MARGIN = 0.05
#: a patch side below this many pixels cannot carry a printable pattern
MIN_PATCH_SIDE = 4


@dataclass(frozen=True)
class RunWarning:
    """One finding: ``kind`` (chance_model | zero_success | tiny_patch | ...), the task and the sentence."""

    kind: str
    task: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


#: the run folder's record of its warnings (read by the report: :func:`read_warnings`)
WARNINGS_FILE = "warnings.json"

_COLLECTED: contextvars.ContextVar[list[RunWarning] | None] = contextvars.ContextVar(
    "pandemonium_run_warnings", default=None)
_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar("pandemonium_run_warnings_file", default=None)


def read_warnings(run_dir: Path) -> list[RunWarning]:
    """The warnings a run recorded in ``<run_dir>/warnings.json`` (empty when it has none)."""
    path = Path(run_dir) / WARNINGS_FILE
    if not path.is_file():
        return []
    try:
        return [RunWarning(**item) for item in json.loads(path.read_text())]
    except (ValueError, TypeError) as err:
        log.warning("unreadable %s (%s); its warnings are not shown", path, err)
        return []


def _write(path: Path, found: Sequence[RunWarning]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([w.to_dict() for w in found], indent=1))
    tmp.replace(path)


@contextlib.contextmanager
def collecting(run_dir: Path | None = None) -> Iterator[list[RunWarning]]:
    """Warnings raised inside the block land in the yielded list (one per mode run) and, with
    ``run_dir``, in its ``warnings.json`` (which starts from what an interrupted attempt recorded, so a
    ``continue`` that skips finished steps still reports their warnings)."""
    found: list[RunWarning] = read_warnings(run_dir) if run_dir is not None else []
    token = _COLLECTED.set(found)
    file_token = _FILE.set(Path(run_dir) / WARNINGS_FILE if run_dir is not None else None)
    try:
        yield found
    finally:
        _FILE.reset(file_token)
        _COLLECTED.reset(token)


def collected() -> list[RunWarning]:
    """Warnings of the current mode run so far (empty outside :func:`collecting`)."""
    return list(_COLLECTED.get() or [])


def warn(kind: str, task: str, message: str) -> RunWarning:
    """Log ``message`` as a WARNING and keep it for the summary (once per kind, task and message)."""
    item = RunWarning(kind=kind, task=str(task), message=message)
    found = _COLLECTED.get()
    if found is not None and item in found:
        return item
    if found is not None:
        found.append(item)
        path = _FILE.get()
        if path is not None and path.parent.is_dir():
            _write(path, found)
    log.warning("%s", message)
    return item


def check_model_quality(task: str, accuracy: float, num_classes: int,
                        margin: float = CHANCE_MARGIN) -> RunWarning | None:
    """Warn when a classifier's accuracy is no better than guessing (``1 / num_classes + margin``)."""
    if num_classes < 2:
        return None
    chance = 1.0 / num_classes
    if float(accuracy) <= chance + margin:
        return warn("chance_model", task,
                    f"task {task!r}: model accuracy {float(accuracy):.3f} is at chance level "
                    f"(1/{num_classes} = {chance:.3f}); results against this model mean little "
                    "(train longer: trainer=default, or check the data)")
    return None


def check_attack_success(task: str, rate: float, metric: str = "success") -> RunWarning | None:
    """Warn when the attack succeeded on no image at all."""
    if float(rate) <= 0.0:
        return warn("zero_success", task,
                    f"task {task!r}: the patch reached {metric} = 0 on every image; raise attack.steps, "
                    "attack.lr or attack.patch_fraction, or check the target")
    return None


def check_patch_size(task: str, height: int, width: int, min_side: int = MIN_PATCH_SIDE) -> RunWarning | None:
    """Warn when the patch is smaller than ``min_side`` pixels on a side."""
    if min(int(height), int(width)) < min_side:
        return warn("tiny_patch", task,
                    f"task {task!r}: the patch is {int(height)}x{int(width)} px, smaller than {min_side} px "
                    "on a side; raise attack.patch_fraction")
    return None


def summary_lines(mode: str, run_dir: Path, created: Sequence[dict[str, Any]],
                  warnings: Sequence[RunWarning], resume_hint: str | None = None) -> list[str]:
    """The few lines a mode ends with: where the run is, what it produced, what to be wary of."""
    lines = [f"{mode}: run folder {run_dir}"]
    counts = Counter(str(rec.get("key")) for rec in created)
    folders = sorted({str(Path(str(rec["path"])).parent.parent) for rec in created if rec.get("path")})
    if counts:
        produced = ", ".join(f"{n} {key}" for key, n in sorted(counts.items()))
        lines.append(f"  produced: {produced}" + (f" (under {folders[0]})" if len(folders) == 1 else ""))
    else:
        lines.append("  produced: no new artifacts")
    for item in warnings:
        lines.append(f"  WARNING: {item.message}")
    if resume_hint:
        lines.append(f"  {resume_hint}")
    return lines


class OnceFilter(logging.Filter):
    """Let each distinct message of a logger through once (internal notes repeated per step)."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._seen: set[tuple[str, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        if key in self._seen:
            return False
        self._seen.add(key)
        return True
