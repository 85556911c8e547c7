"""Schedulers (one per mode) and executors. ``AbstractBaseScheduler`` is the base of every mode."""

from __future__ import annotations

from pandemonium._lazy import lazy_exports

_EXPORTS = {
    "AbstractBaseScheduler": "pandemonium.schedulers.base",
    "Step": "pandemonium.schedulers.base",
    "StepOutcome": "pandemonium.schedulers.base",
    "build_scheduler": "pandemonium.schedulers.base",
    "Executor": "pandemonium.schedulers.executors",
    "LocalExecutor": "pandemonium.schedulers.executors",
    "PandemoniumError": "pandemonium.schedulers.errors",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
