"""Schedulers (one per mode) and executors. ``AbstractBaseScheduler`` is the base of every mode."""

from __future__ import annotations

from pandemonium._lazy import lazy_exports

_EXPORTS = {
    "AbstractBaseScheduler": "pandemonium.runs.base",
    "Step": "pandemonium.runs.base",
    "StepOutcome": "pandemonium.runs.base",
    "build_scheduler": "pandemonium.runs.base",
    "Executor": "pandemonium.runs.executors",
    "LocalExecutor": "pandemonium.runs.executors",
    "PandemoniumError": "pandemonium.errors",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
