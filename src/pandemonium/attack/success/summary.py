"""Evaluation-table columns of success metrics and their summary (rates, baselines, intervals).

Each scored **arm** of an evaluation is one of :data:`ARMS`: ``patch`` (the patch under test),
``control`` (no patch), ``random`` (a uniform-noise patch of the same size) and ``grey`` (a grey patch
of the same size), all under the same fixed conditions. Per rate ``<name>`` a table holds:

- ``<name>_hits`` / ``<name>_trials`` (patch arm) and ``<name>_<arm>_hits`` / ``<name>_<arm>_trials``;
- ``<name>``: the patch arm's per-row fraction (NaN where the row has no trials).

:func:`summarize_success` turns them into the summary keys (intervals over scenes, from
:mod:`pandemonium.attack.statistics`):

- ``<name>``, ``<name>_ci_low``, ``<name>_ci_high``: the patched rate;
- ``<name>_<arm>``, ``<name>_<arm>_ci_low``, ``<name>_<arm>_ci_high`` for the baseline arms;
- ``<name>_diff_vs_<arm>``, ``..._ci_low``, ``..._ci_high``: paired difference patched - baseline;
- ``<name>_n_rows``, ``<name>_n_scenes``, ``<name>_trials``: what the patched rate stands on;
- for per-class rate families ``<family>.c<k>`` (IoU): ``m<family>`` (e.g. ``miou_outside``) per arm.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import pandas as pd

from pandemonium.attack.statistics import Interval, mean_rate_interval, paired_difference, rate_interval
from pandemonium.attack.success.base import RowCounts

__all__ = ["ARMS", "BASELINE_ARMS", "arm_column", "count_columns", "rate_names", "summarize_success"]

ARMS = ("patch", "control", "random", "grey")
BASELINE_ARMS = ARMS[1:]
_CLASS_RATE = re.compile(r"^(?P<family>.+)\.c(?P<k>\d+)$")


def arm_column(name: str, arm: str) -> str:
    """Column stem of rate ``name`` for ``arm`` (``name`` itself for the patch arm)."""
    return name if arm == "patch" else f"{name}_{arm}"


def count_columns(counts: Mapping[str, RowCounts], arm: str) -> dict[str, np.ndarray]:
    """Table columns of one arm's per-row counts (see the module docstring)."""
    cols: dict[str, np.ndarray] = {}
    for name, c in counts.items():
        stem = arm_column(name, arm)
        cols[f"{stem}_hits"], cols[f"{stem}_trials"] = c.hits, c.trials
        if arm == "patch":
            cols[name] = c.per_row()
    return cols


def rate_names(table: pd.DataFrame) -> list[str]:
    """The rates a table holds counts of (patch arm), in column order."""
    names = []
    for col in table.columns:
        col = str(col)
        if col.endswith("_hits") and f"{col[:-5]}_trials" in table.columns:
            name = col[:-5]
            if not any(name.endswith(f"_{arm}") for arm in BASELINE_ARMS):
                names.append(name)
    return names


def _put(summary: dict[str, Any], key: str, iv: Interval) -> None:
    summary[key], summary[f"{key}_ci_low"], summary[f"{key}_ci_high"] = iv.value, iv.ci_low, iv.ci_high


def summarize_success(table: pd.DataFrame, scenes: Any = None, seed: int = 0,
                      only: Collection[str] | None = None) -> dict[str, float]:
    """Rates of every arm, paired differences against each baseline and counts (module docstring).

    ``only``: summarise just these rates (and per-class families named by their ``m<family>`` key);
    each keeps the seed, so the interval it has in the full summary.
    """
    summary: dict[str, float] = {}
    families: dict[str, list[str]] = {}
    names = rate_names(table)

    def col(stem: str, part: str) -> np.ndarray:
        return table[f"{stem}_{part}"].to_numpy(dtype=np.float64)

    for i, name in enumerate(names):
        match = _CLASS_RATE.match(name)
        if match and (only is None or f"m{match['family']}" in only):
            families.setdefault(match["family"], []).append(name)
            continue
        if match or (only is not None and name not in only):
            continue
        iv = rate_interval(col(name, "hits"), col(name, "trials"), scenes, seed=seed + i)
        _put(summary, name, iv)
        summary[f"{name}_n_rows"], summary[f"{name}_n_scenes"], summary[f"{name}_trials"] = (
            iv.n_rows, iv.n_scenes, iv.trials)
        for arm in BASELINE_ARMS:
            stem = arm_column(name, arm)
            if f"{stem}_hits" not in table:
                continue
            _put(summary, stem, rate_interval(col(stem, "hits"), col(stem, "trials"), scenes, seed=seed + i))
            _put(summary, f"{name}_diff_vs_{arm}", paired_difference(
                col(name, "hits"), col(name, "trials"), col(stem, "hits"), col(stem, "trials"), scenes, seed=seed + i))
    for family, members in families.items():
        for arm in ARMS:
            stems = [arm_column(m, arm) for m in members]
            if all(f"{s}_hits" in table for s in stems):
                iv = mean_rate_interval([col(s, "hits") for s in stems], [col(s, "trials") for s in stems], scenes,
                                        seed=seed)
                _put(summary, arm_column(f"m{family}", arm), iv)
    return summary
