"""Transfer matrices and robustness curves from per-row success records.

Everything here is a pure function of arrays / DataFrames, so the `evaluate` mode, the report and
the tests share one definition of a rate and one way of computing its interval. What counts as a
success is defined once, in :mod:`pandemonium.attack.success`; the fixed evaluation stores it per row
as ``<rate>_hits`` / ``<rate>_trials`` and :func:`success_from_eval_table` reads it back.

Per-row records are rows ``(patch_id, model_id, success, weight, [scene_id], <condition columns>)``:
``success`` in [0, 1] is the row's fraction and ``weight`` how many trials the row stands for (rows
with weight 0 have nothing to attack and are left out). Rates are ``sum(success * weight) /
sum(weight)`` with an interval from :func:`pandemonium.attack.statistics.rate_interval`: a bootstrap
over ``scene_id`` (over rows without it), Wilson where the bootstrap cannot spread.

>>> import pandas as pd
>>> rec = pd.DataFrame({"patch_id": ["p"] * 4, "model_id": ["m"] * 4, "success": [1, 1, 1, 0]})
>>> float(transfer_matrix(rec)["rate"].iloc[0])
0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pandemonium.attack.statistics import StatisticsError, rate_interval, wilson_interval

__all__ = [
    "RateSummary",
    "summarise_rate",
    "wilson_interval",
    "transfer_matrix",
    "matrix_pivot",
    "robustness_curve",
    "success_from_eval_table",
]


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


# --------------------------------------------------------------------------- aggregation


def _check_columns(records: pd.DataFrame, needed: Sequence[str]) -> None:
    missing = [c for c in needed if c not in records.columns]
    if missing:
        raise KeyError(f"records lack column(s) {missing}; have {list(records.columns)}")


def _grouped_rates(records: pd.DataFrame, by: list[str], confidence: float, n_boot: int,
                   seed: int) -> pd.DataFrame:
    rows = []
    for key, group in records.groupby(by, sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        weight = group["weight"] if "weight" in group else None
        scenes = group["scene_id"].to_numpy() if "scene_id" in group else None
        summary = summarise_rate(group["success"], weight, confidence, n_boot, seed, scenes)
        rows.append({**dict(zip(by, key)), **summary.as_dict()})
    return pd.DataFrame(rows, columns=[*by, "rate", "ci_low", "ci_high", "n", "trials", "n_scenes"])


def transfer_matrix(
    records: pd.DataFrame,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Long table ``(patch_id, model_id, rate, ci_low, ci_high, n, trials)`` from per-sample records.

    Extra identifying columns (``patch_task``, ``model_task``) are carried along when present.
    """
    _check_columns(records, ["patch_id", "model_id", "success"])
    by = ["patch_id", "model_id"] + [c for c in ("patch_task", "model_task") if c in records]
    return _grouped_rates(records, by, confidence, n_boot, seed)


def matrix_pivot(table: pd.DataFrame, value: str = "rate") -> pd.DataFrame:
    """Patches as rows, models as columns, ``value`` in the cells (NaN where a pair was not run)."""
    _check_columns(table, ["patch_id", "model_id", value])
    return table.pivot(index="patch_id", columns="model_id", values=value)


def robustness_curve(
    records: pd.DataFrame,
    condition: str,
    confidence: float = 0.95,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Rate per value of a swept ``condition`` (e.g. ``scale`` or ``angle``) for each patch × model.

    Returns ``(patch_id, model_id, <condition>, rate, ci_low, ci_high, n, trials)`` sorted by the
    condition, ready to plot as one line per patch × model.
    """
    _check_columns(records, ["patch_id", "model_id", "success", condition])
    return _grouped_rates(records, ["patch_id", "model_id", condition], confidence, n_boot, seed)


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
