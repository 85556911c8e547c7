"""Everything the CLI checks between reading the command line and letting Hydra write a run folder.

:func:`preflight` parses the overrides, checks group options and added keys by name, composes the
config (each combination of a ``--multirun`` sweep), checks it against :mod:`pandemonium.cli.schema`
and, for ``continue=...``, replays the interrupted run's overrides and refuses changed ones unless
``allow_changes=true``. It returns the overrides Hydra should run with.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pandemonium.cli import schema
from pandemonium.errors import ConfigError, ContinueError

#: sweep combinations checked before a multirun (each one is composed; more are checked by the jobs)
MAX_SWEEP_CHECKS = 16
#: overrides that say where a run is rather than what it computes, so ``continue`` may restate them
_NOT_COMPARED = frozenset({"continue", "allow_changes", "mode", "proj", "out_dir", "data_dir"})


@dataclass
class Preflight:
    """What :func:`preflight` found: the overrides to run, and for ``continue`` the run and changes."""

    overrides: list[str]
    run_dir: Path | None = None
    changes: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    cfg: Any = None


def parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parsed = []
    parser = OverridesParser.create()
    for line in overrides:
        try:
            parsed.extend(parser.parse_overrides([line]))
        except OverrideParseException as exc:
            raise ConfigError(f"cannot parse override {line!r}: {str(exc).splitlines()[0]}") from None
    return parsed


def _value_str(override: Any) -> str:
    return "" if override.is_delete() else str(override.get_value_element_as_str())


def _combinations(parsed: list[Any]) -> list[list[str]]:
    """The overrides of each job of a sweep (the first MAX_SWEEP_CHECKS), plain lines otherwise."""
    choices: list[list[str]] = []
    for ov in parsed:
        prefix = ov.input_line.split(ov.key_or_group, 1)[0]
        if ov.is_sweep_override():
            choices.append([f"{prefix}{ov.key_or_group}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([ov.input_line])
    return [list(c) for c in itertools.islice(itertools.product(*choices), MAX_SWEEP_CHECKS)]


def _compose(lines: Sequence[str]) -> Any:
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from pandemonium.cli.main import compose_config

    try:
        cfg = compose_config(lines)
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_hydra_message(exc)) from None


def _hydra_message(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    if "Key '" in text and "is not in struct" in text or "Could not override" in text:
        return " ".join(lines[:2]) + " (a key must exist in the config; see `pandemonium <mode> --cfg job`)"
    return first


def check_names(parsed: list[Any], dirs: Sequence[Path]) -> None:
    """Group options by name (before composing: Hydra skips an unknown option of an optional group)."""
    for ov in parsed:
        if ov.is_delete() or ov.package is not None or "." in ov.key_or_group:
            continue
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.value()]
        for value in values:
            if not isinstance(value, (str, list)) and value is not None:
                # `trainer=true` / `model=1`: Hydra reads a bool or a number, which no group option is;
                # judged by the text typed, so the message shows what the user wrote
                value = schema.typed_group_choice(dirs, ov.key_or_group, ov.input_line.split("=", 1)[1])
            schema.check_group_choice(dirs, ov.key_or_group, value)


def check_added(parsed: list[Any], lines: Sequence[str], dirs: Sequence[Path]) -> None:
    """``+key=value`` adds a key; only below open mappings (kwargs, plugin keys) may that be new."""
    added = [ov for ov in parsed if ov.is_add() or ov.is_force_add()]
    added = [ov for ov in added if schema.group_options(dirs, ov.key_or_group) is None
             and not ov.key_or_group.startswith("hydra.")]
    if not added:
        return
    base = _compose([line for line in lines if line not in {ov.input_line for ov in added}])
    for ov in added:
        schema.check_added_key(ov.key_or_group, base)


def stored_overrides(run_dir: Path) -> list[str]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except yaml.YAMLError as exc:
        raise ContinueError(f"continue: {path} is corrupt ({exc})") from None
    return [str(x) for x in data]


def continue_overrides(current: list[str], stored: list[str], allow: bool
                       ) -> tuple[list[str], dict[str, tuple[str | None, str]]]:
    """The interrupted run's overrides with the current ones on top, and what the current ones change."""
    now = {ov.key_or_group: ov for ov in parse(current)}
    before = {ov.key_or_group: ov for ov in parse(stored)}
    changes: dict[str, tuple[str | None, str]] = {}
    for key, ov in now.items():
        if key in _NOT_COMPARED or key.startswith("hydra."):
            continue
        old = before.get(key)
        if old is None or _value_str(old) != _value_str(ov) or old.type != ov.type:
            changes[key] = (None if old is None else old.input_line, ov.input_line)
    if changes and not allow:
        listed = "; ".join(f"{old or '(default)'} -> {new}" for old, new in changes.values())
        raise ContinueError(
            f"continue: these overrides differ from the interrupted run's: {listed}. "
            "Continue without them (the run's own settings are replayed), or add allow_changes=true "
            "to change them (recorded in the run journal)")
    kept = [ov.input_line for key, ov in before.items() if key not in now and key not in _NOT_COMPARED]
    return kept + list(current), changes


def preflight(overrides: Sequence[str], dirs: Sequence[Path], mode: str | None,
              multirun: bool = False) -> Preflight:
    """Check ``overrides`` (``mode=...`` first) before anything is written; see the module docstring."""
    from pandemonium.runs.file_manager import find_run_dir, run_dirs_of
    from pandemonium.runs.journal import RunJournal

    lines = list(overrides)
    parsed = parse(lines)
    check_names(parsed, dirs)
    check_added(parsed, lines, dirs)
    combos = _combinations(parsed) if multirun else [lines]
    cfg = None
    for combo in combos:
        cfg = _compose(combo)
        schema.validate_config(cfg)
    result = Preflight(overrides=lines, cfg=cfg)
    cont = cfg.get("continue") if isinstance(cfg, dict) else None
    if multirun or cont in (None, "", False):
        return result
    out_dir, proj = str(cfg["out_dir"]), str(cfg["proj"])
    run_dir = find_run_dir(out_dir, proj, str(cont), mode=mode)
    if run_dir is None:
        runs = [p.name for p in run_dirs_of(out_dir, proj, mode=mode)]
        raise ContinueError(
            f"continue={cont}: no resumable {mode or ''} run of project {proj!r} in "
            f"{Path(out_dir).absolute() / proj / 'runs'} (runs of this mode: {', '.join(runs) or 'none'})")
    RunJournal(run_dir).check_unlocked()  # a run another process works on is refused before anything else
    current = [line for line in lines if not line.startswith(("continue=", "mode="))]
    merged, changes = continue_overrides(current, stored_overrides(run_dir), bool(cfg.get("allow_changes")))
    head = [line for line in lines if line.startswith("mode=")]
    # the user's own spelling (e.g. continue=latest) is what the run's override record keeps; it names
    # the run just resolved, since `latest` means the newest run of this mode
    typed = [line for line in lines if line.startswith("continue=")]
    final = [*head, *merged, *(typed or [f"continue={run_dir}"])]
    if changes or merged != current:
        for combo in [final]:
            schema.validate_config(_compose(combo))
    return Preflight(overrides=final, run_dir=run_dir, changes=changes, cfg=cfg)
