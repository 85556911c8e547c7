"""Checks that turn bad config input into one clear line before Hydra would print a traceback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml


def mode_description(path: Path) -> str:
    """``mode.description`` of a mode yaml (first line), or a placeholder."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, OSError):
        return "(unreadable mode config)"
    mode = data.get("mode") if isinstance(data, dict) else None
    desc = mode.get("description") if isinstance(mode, dict) else None
    return str(desc).strip().splitlines()[0] if desc else "(no mode.description)"


def check_yaml_files(dirs: Sequence[Path]) -> str | None:
    """The first malformed YAML file below ``dirs`` as a message naming file, line and problem."""
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.yaml")):
            try:
                yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
                problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
                return f"malformed YAML in {path}{where}: {problem}"
            except (OSError, UnicodeDecodeError) as exc:
                return f"cannot read config file {path}: {exc}"
    return None


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a reported failure (one line, the error's exit code), not a bug."""
    from pandemonium.errors import PandemoniumError

    return (PandemoniumError,)
