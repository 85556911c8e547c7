"""Learning-rate (step-size) schedules for patch training, built on ``torch.optim.lr_scheduler``.

Every schedule is stepped once per optimiser step, except ``plateau``, which the trainer steps
once per evaluation with the monitored evaluation metric.

>>> import torch
>>> p = torch.nn.Parameter(torch.zeros(1))
>>> opt = torch.optim.SGD([p], lr=1.0)
>>> sched = build_schedule("warmup", opt, total_steps=100, warmup_steps=10, after="cosine")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    ExponentialLR,
    LinearLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
)

__all__ = ["SCHEDULES", "SCHEDULE_DEFAULTS", "build_schedule", "is_plateau"]

#: Exposed constants of every schedule; each can be overridden by name in ``build_schedule``.
SCHEDULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "none": {},
    # T_max defaults to the number of steps of the fit
    "cosine": {"T_max": None, "eta_min": 0.0},
    "exponential": {"gamma": 0.99},
    "plateau": {"mode": "min", "factor": 0.5, "patience": 3, "threshold": 1e-4, "min_lr": 0.0},
    # linear ramp from start_factor * lr to lr over warmup_steps, then the `after` schedule
    "warmup": {"warmup_steps": 10, "start_factor": 0.1, "after": "none", "after_kwargs": None},
}

SCHEDULES = tuple(SCHEDULE_DEFAULTS)


def is_plateau(schedule: Any) -> bool:
    """True for schedules stepped with a metric (once per evaluation)."""
    return isinstance(schedule, ReduceLROnPlateau)


def _check_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    unknown = set(settings) - set(SCHEDULE_DEFAULTS[name])
    if unknown:
        raise ValueError(
            f"schedule {name!r} got unknown settings {sorted(unknown)}; "
            f"known settings: {sorted(SCHEDULE_DEFAULTS[name])}"
        )
    return {**SCHEDULE_DEFAULTS[name], **settings}


def build_schedule(
    name: str | Mapping[str, Any] | None, optimizer: Optimizer, total_steps: int | None = None, **settings: Any
) -> LRScheduler | ReduceLROnPlateau:
    """Build a schedule by name: ``none``, ``cosine``, ``exponential``, ``plateau``, ``warmup``.

    Args:
        name: schedule name (``None`` means ``"none"``), or a spec ``{"name": ..., **settings}``
            (``_target_`` is accepted in place of ``name``, as for optimisers).
        optimizer: the optimiser whose ``lr`` is scheduled.
        total_steps: number of optimiser steps of the fit (default ``T_max`` for cosine).
        **settings: overrides of :data:`SCHEDULE_DEFAULTS` for that schedule.
    """
    if isinstance(name, Mapping):
        spec = dict(name)
        name = spec.pop("name", spec.pop("_target_", None))
        settings = {**spec, **settings}
    key = (name or "none").lower().replace("-", "").replace("_", "")
    if key not in SCHEDULE_DEFAULTS:
        raise ValueError(f"unknown schedule {name!r}; known schedules: {list(SCHEDULES)}")
    cfg = _check_settings(key, settings)
    if key == "none":
        # factor 1 for 0 iterations: a real LRScheduler with a state_dict, so the trainer never
        # special-cases "no schedule".
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    if key == "cosine":
        t_max = cfg["T_max"] if cfg["T_max"] is not None else total_steps
        if not t_max or t_max < 1:
            raise ValueError("schedule 'cosine' needs T_max (or total_steps) >= 1")
        return CosineAnnealingLR(optimizer, T_max=int(t_max), eta_min=cfg["eta_min"])
    if key == "exponential":
        return ExponentialLR(optimizer, gamma=cfg["gamma"])
    if key == "plateau":
        return ReduceLROnPlateau(
            optimizer,
            mode=cfg["mode"],
            factor=cfg["factor"],
            patience=cfg["patience"],
            threshold=cfg["threshold"],
            min_lr=cfg["min_lr"],
        )
    # warmup
    warmup_steps = int(cfg["warmup_steps"])
    if warmup_steps < 1:
        raise ValueError(f"schedule 'warmup': warmup_steps must be >= 1, got {warmup_steps}")
    after_name = (cfg["after"] or "none").lower()
    if after_name in ("plateau", "warmup"):
        raise ValueError(f"schedule 'warmup' cannot wrap {after_name!r}; use none, cosine or exponential")
    after_kwargs = dict(cfg["after_kwargs"] or {})
    remaining = None if total_steps is None else max(1, total_steps - warmup_steps)
    warm = LinearLR(optimizer, start_factor=cfg["start_factor"], end_factor=1.0, total_iters=warmup_steps)
    after = build_schedule(after_name, optimizer, total_steps=remaining, **after_kwargs)
    return SequentialLR(optimizer, schedulers=[warm, after], milestones=[warmup_steps])
