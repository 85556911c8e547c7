"""Schedulers (one per mode) and executors. ``AbstractBaseScheduler`` is the base of every mode."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AbstractBaseScheduler": "pandemonium.schedulers.base",
    "Step": "pandemonium.schedulers.base",
    "StepOutcome": "pandemonium.schedulers.base",
    "build_scheduler": "pandemonium.schedulers.base",
    "Executor": "pandemonium.schedulers.executors",
    "LocalExecutor": "pandemonium.schedulers.executors",
    "PandemoniumError": "pandemonium.schedulers.errors",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pandemonium.schedulers' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
