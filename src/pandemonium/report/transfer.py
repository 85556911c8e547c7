"""Success rates with their intervals from per-row success records.

Everything here is a pure function of arrays / DataFrames, so the modes, the report and the tests
share one definition of a rate and one way of computing its interval (the transfer table and the
robustness curves are built by ``pandemonium.modes.steps.transfer`` from each evaluation's
scene-level summary). What counts as a success is defined once, in :mod:`pandemonium.attack.success`;
the fixed evaluation stores it per row as ``<rate>_hits`` / ``<rate>_trials`` and
:func:`success_from_eval_table` reads it back.

Per-row records are a ``success`` in [0, 1] (the row's fraction) and a ``weight``, how many trials the
row stands for (rows with weight 0 have nothing to attack and are left out), optionally with the
row's scene. Rates are ``sum(success * weight) / sum(weight)`` with an interval from
:func:`pandemonium.attack.statistics.rate_interval`: a bootstrap over scenes (over rows without
them), Wilson where the bootstrap cannot spread.

>>> summarise_rate([1, 1, 1, 0]).rate
0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pandemonium.attack.statistics import StatisticsError, rate_interval

__all__ = ["RateSummary", "success_from_eval_table", "summarise_rate"]


@dataclass(frozen=True)
class RateSummary:
    """A rate with its interval, the rows, distinct scenes and trials behind it."""

    rate: float
    ci_low: float
    ci_high: float
    n: int
    trials: float
    n_scenes: int = 0

    def as_dict(self) -> dict[str, float]:
        return {"rate": self.rate, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n,
                "trials": self.trials, "n_scenes": self.n_scenes}


def summarise_rate(
    success: Sequence[float] | np.ndarray,
    weight: Sequence[float] | np.ndarray | None = None,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
    scenes: Sequence[Any] | np.ndarray | None = None,
) -> RateSummary:
    """Weighted success rate with its interval over ``scenes`` (see the module docstring); seeded."""
    s = np.asarray(success, dtype=float).reshape(-1)
    w = np.ones_like(s) if weight is None else np.asarray(weight, dtype=float).reshape(-1)
    if s.shape != w.shape:
        raise StatisticsError(f"success has {s.size} rows but weight has {w.size}")
    finite = np.isfinite(s) & np.isfinite(w)
    if np.any((s[finite & (w > 0)] < 0) | (s[finite & (w > 0)] > 1)):
        raise StatisticsError("success values must lie in [0, 1]")
    w = np.where(finite, w, 0.0)
    iv = rate_interval(np.where(finite, s, 0.0) * w, w, scenes, confidence, n_boot, seed)
    return RateSummary(iv.value, iv.ci_low, iv.ci_high, iv.n_rows, iv.trials, iv.n_scenes)


def success_from_eval_table(table: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``(success, weight)`` per row of a fixed-evaluation table for rate ``metric``: the row's
    fraction ``hits / trials`` and its ``trials`` (0 where the row has nothing to attack)."""
    hits_col, trials_col = f"{metric}_hits", f"{metric}_trials"
    if hits_col not in table.columns or trials_col not in table.columns:
        rates = sorted(str(c)[:-5] for c in table.columns if str(c).endswith("_hits"))
        raise KeyError(f"evaluation table has no rate {metric!r} ({hits_col}/{trials_col}); rates: {rates}")
    hits = table[hits_col].to_numpy(dtype=float)
    trials = table[trials_col].to_numpy(dtype=float)
    ok = np.isfinite(hits) & np.isfinite(trials) & (trials > 0)
    success = np.where(ok, hits / np.where(ok, trials, 1.0), 0.0)
    return np.clip(success, 0.0, 1.0), np.where(ok, trials, 0.0)
