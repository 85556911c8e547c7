"""The typed schema of the composed config, checked before Hydra writes anything.

Two kinds of checks, both raising :class:`~pandemonium.errors.ConfigError` that names the key:

- **names**: a group option that no config folder offers (``trainer=fastt``), a key that the config
  does not have (``+attack.stepz=5``), each answered with the nearest valid names;
- **values**: types and ranges of the keys every mode shares (``seed`` an int, ``attack.steps >= 1``,
  a finite ``lr``, a plain ``proj``, an available ``device``, a ``task_list`` that is a list).

>>> check_value("attack.steps", -3)  # doctest: +SKIP
Traceback (most recent call last):
ConfigError: attack.steps=-3: must be an integer >= 1
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pandemonium.errors import ConfigError

#: mappings whose keys are free (kwargs handed to a callable or a plugin); ``+key=value`` may add to them
OPEN_PATHS: tuple[str, ...] = (
    "hydra", "reuse", "mode.creator_kwargs", "trainer.lightning", "trainer.optimizer",
    "trainer.gpu_augmentations", "trainer.task_type_overrides", "model", "executor",
)
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def nearest(name: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates closest to ``name`` (difflib ratio), best first."""
    return difflib.get_close_matches(str(name), [str(c) for c in candidates], n=n, cutoff=0.5)


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = nearest(name, candidates)
    hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
    listed = ", ".join(sorted(map(str, candidates))) or "none"
    return f"{hint}valid: {listed}"


# -- value checks ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """How one key is checked: ``kind`` (int | float | name | bool | str), bounds, null allowed."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nullable: bool = False

    def problem(self, value: Any) -> str | None:
        if value is None:
            return None if self.nullable else "must be set (it is null)"
        if self.kind == "bool":
            return None if isinstance(value, bool) else f"must be true or false, got {type(value).__name__}"
        if self.kind == "name":
            return None if isinstance(value, str) and _PLAIN_NAME.match(value) else (
                "must be a plain name (letters, digits, '_', '-', '.'; no path separators, not starting with '.')")
        if self.kind == "str":
            return None if isinstance(value, str) else f"must be a string, got {type(value).__name__}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {type(value).__name__} {value!r}"
        if self.kind == "int" and not isinstance(value, int):
            return f"must be an integer, got {value!r}"
        if not math.isfinite(float(value)):
            return f"must be a finite number, got {value!r}"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high:g}"
        return None


POSITIVE_INT = Check("int", low=1)
POSITIVE_FLOAT = Check("float", low=0.0, low_open=True)

ROOT_SCHEMA: dict[str, Check] = {
    "seed": Check("int"),
    "fold": Check("int", low=0),
    "proj": Check("name"),
    "data_dir": Check("str"),
    "out_dir": Check("str"),
    "allow_changes": Check("bool"),
}
# keys below `attack` (the overrides of the chosen presets) and below each preset
ATTACK_OVERRIDES: dict[str, Check] = {
    "steps": Check("int", low=1, nullable=True),
    "batch_size": Check("int", low=1, nullable=True),
    "num_eval": Check("int", low=1, nullable=True),
    "lr": Check("float", low=0.0, low_open=True, nullable=True),
    "patch_fraction": Check("float", low=0.0, high=1.0, low_open=True, nullable=True),
    "devices": Check("int", low=1, nullable=True),
}
PRESET_SCHEMA: dict[str, Check] = {
    "steps": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "num_eval": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "eval_every": POSITIVE_INT,
    "target_class": Check("int", low=0, nullable=True),
    "optimizer.lr": POSITIVE_FLOAT,
    "patch.fraction": Check("float", low=0.0, high=1.0, low_open=True, nullable=True),
}


def _get(cfg: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_value(key: str, value: Any, check: Check | None = None) -> None:
    """Raise ConfigError naming ``key`` when ``value`` breaks ``check`` (default: the schema's)."""
    check = check or ROOT_SCHEMA.get(key) or ATTACK_OVERRIDES.get(key.removeprefix("attack."))
    problem = check.problem(value) if check else None
    if problem:
        raise ConfigError(f"{key}={value!r}: {problem}")


def _check_section(cfg: Mapping[str, Any], schema: Mapping[str, Check], prefix: str) -> None:
    for key, check in schema.items():
        found, value = _get(cfg, key)
        if found:
            check_value(f"{prefix}{key}", value, check)


def check_task_list(value: Any) -> None:
    if value is None:
        return
    if isinstance(value, str):
        raise ConfigError(
            f"task_list={value}: task_list is a list; write task_list=[{value}] "
            f"(several: task_list=[{value},other_task])")
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"task_list={value!r}: must be a list of task names, e.g. task_list=[digits]")
    for name in value:
        if not isinstance(name, str) or not _PLAIN_NAME.match(name):
            raise ConfigError(f"task_list: invalid task name {name!r}: use a plain name without path separators")


def check_device(value: Any, cuda_available: Callable[[], int] | None = None) -> None:
    """``auto | cpu | cuda | cuda:N | mps``; a CUDA device must exist (torch is imported only then)."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ConfigError(f"device={value!r}: must be auto, cpu, cuda, cuda:N or mps")
    if value.startswith("cuda"):
        count = (cuda_available or _cuda_count)()
        index = int(value.split(":")[1]) if ":" in value else 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA GPU"
            raise ConfigError(f"device={value}: this machine has {have}; use device=cpu or device=auto")
    if value == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise ConfigError("device=mps: MPS is not available on this machine; use device=cpu or device=auto")


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_out_dir(value: str) -> None:
    """The results folder (or its nearest existing parent) must be a writable folder."""
    path = Path(value).expanduser().absolute()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"out_dir={value}: {probe} is not a folder")
    try:  # a real write (removed at once): os.access says yes to root even on read-only mounts
        os.rmdir(tempfile.mkdtemp(prefix=".pandemonium_probe_", dir=probe))
    except OSError as exc:
        raise ConfigError(f"out_dir={value}: {probe} is not writable ({exc.strerror}); choose another out_dir") from None


def check_attack(attack: Any) -> None:
    if not isinstance(attack, Mapping):
        return
    if "presets" in attack:
        _check_section(attack, ATTACK_OVERRIDES, "attack.")
        for name, preset in (attack.get("presets") or {}).items():
            if isinstance(preset, Mapping):
                _check_section(preset, PRESET_SCHEMA, f"attack.presets.{name}.")
    else:  # `attack=<preset>`: the section is one preset
        _check_section(attack, PRESET_SCHEMA, "attack.")


def validate_config(cfg: Mapping[str, Any], check_devices: bool = True) -> None:
    """Check a composed config (resolved to plain data) against the schema; raise ConfigError on the
    first problem."""
    _check_section(cfg, ROOT_SCHEMA, "")
    check_task_list(cfg.get("task_list"))
    if cfg.get("out_dir") is not None:
        check_out_dir(str(cfg["out_dir"]))
    if check_devices and "device" in cfg:
        check_device(cfg["device"])
    check_attack(cfg.get("attack"))


# -- name checks -------------------------------------------------------------------------------------
def group_options(dirs: Sequence[Path], group: str) -> list[str] | None:
    """Options of config group ``group`` over the search path, or None when no folder has that group."""
    found: set[str] = set()
    is_group = False
    for folder in dirs:
        sub = Path(folder) / group.replace(".", "/")
        if sub.is_dir():
            is_group = True
            found.update(p.stem for p in sub.glob("*.yaml"))
            found.update(p.stem for p in sub.glob("*.yml"))
    return sorted(found) if is_group else None


def check_group_choice(dirs: Sequence[Path], group: str, value: Any) -> None:
    """``trainer=fastt`` -> ConfigError naming the nearest options of the group."""
    options = group_options(dirs, group)
    if options is None:
        return
    if value is None:  # Hydra itself would fail with a ValueError ("must be a string or a list")
        raise ConfigError(f"{group}=null: config group {group!r} needs one of its options; {_suggest('null', options)}")
    for choice in value if isinstance(value, list) else [value]:
        if str(choice) not in options:
            raise ConfigError(f"{group}={choice}: no option {choice!r} in config group {group!r}; "
                              f"{_suggest(str(choice), options)}")


def typed_group_choice(dirs: Sequence[Path], group: str, text: str) -> str:
    """The option text of ``group=<text>`` that Hydra parsed as a bool or a number; when it names an
    option, ConfigError asking for quotes (Hydra only takes a string as a group option)."""
    options = group_options(dirs, group)
    if options is not None and text in options:
        raise ConfigError(f"{group}={text}: Hydra reads {text!r} as a {'bool' if text.lower() in ('true', 'false') else 'number'}; "
                          f"quote the option to select it: {group}='{text}'")
    return text


def is_open(path: str, cfg: Mapping[str, Any]) -> bool:
    """True when keys may be added below ``path`` (listed in OPEN_PATHS or kwargs of a ``_target_``)."""
    if any(path == p or path.startswith(p + ".") for p in OPEN_PATHS):
        return True
    found, node = _get(cfg, path)
    return found and isinstance(node, Mapping) and "_target_" in node


def check_added_key(key: str, base: Mapping[str, Any]) -> None:
    """``+a.b.c=v``: refuse when ``a.b`` (or the first missing level) is not an open mapping of
    ``base`` (the config composed without that override)."""
    parts = key.split(".")
    for depth in range(len(parts)):
        parent = ".".join(parts[:depth])
        if parent and is_open(parent, base):
            return
        found, node = _get(base, parent) if parent else (True, base)
        if not found or not isinstance(node, Mapping):
            return
        if parts[depth] not in node:
            where = f"in {parent!r}" if parent else "at the top level"
            keys = [str(k) for k in node if not str(k).startswith("_")]
            raise ConfigError(f"unknown key {key!r}: there is no {parts[depth]!r} {where}; {_suggest(parts[depth], keys)}")
