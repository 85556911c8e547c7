"""Which sampled conditions drive attack failure? Helpers over a :class:`FixedEvaluation` table.

- :func:`param_importance`: permutation importance (scikit-learn) of the sampled params
  (``param:<key>`` columns) for predicting a per-sample metric such as ``total_delta``.
- :func:`plot_metric_vs_param`: the metric's mean per quantile bin of one param with bootstrap CIs.

>>> table = load_table("results/fit/eval/eval_step000500.parquet")          # doctest: +SKIP
>>> param_importance(table, "total_delta").head()                          # doctest: +SKIP
>>> plot_metric_vs_param(table, "param:1_ColorJiggle/brightness", "total_delta", "b.png")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pandemonium.attack.rows import PARAM_PREFIX
from pandemonium.attack.statistics import bootstrap_ci

__all__ = ["failure_report", "numeric_params", "param_importance", "plot_metric_vs_param"]


def _column(table: pd.DataFrame, name: str) -> str:
    if name in table.columns:
        return name
    if PARAM_PREFIX + name in table.columns:
        return PARAM_PREFIX + name
    raise KeyError(
        f"column {name!r} is not in the evaluation table; params: "
        f"{[c for c in table.columns if str(c).startswith(PARAM_PREFIX)]}, other columns: "
        f"{[c for c in table.columns if not str(c).startswith(PARAM_PREFIX)]}"
    )


def numeric_params(table: pd.DataFrame) -> pd.DataFrame:
    """The sampled params as a numeric feature frame (booleans as 0/1; non-numeric and constant
    columns are left out because they cannot explain any variation)."""
    cols = {}
    for c in table.columns:
        if not str(c).startswith(PARAM_PREFIX):
            continue
        series = table[c]
        if pd.api.types.is_bool_dtype(series):
            series = series.astype(float)
        if pd.api.types.is_numeric_dtype(series) and series.nunique(dropna=True) > 1:
            cols[str(c)[len(PARAM_PREFIX):]] = series.astype(float)
    return pd.DataFrame(cols)


def param_importance(
    table: pd.DataFrame, metric: str = "total_delta", seed: int = 0, n_repeats: int = 10, n_estimators: int = 100
) -> pd.DataFrame:
    """Permutation importance of each sampled param for predicting ``metric`` per sample.

    A random forest (scikit-learn, seeded) is fitted on the params; permuting a param that drives
    the metric hurts its R^2 a lot, permuting an irrelevant one does not.

    Returns:
        a frame indexed by param name with ``importance_mean`` and ``importance_std``, sorted
        descending, plus the forest's in-sample ``r2`` in ``attrs``.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.inspection import permutation_importance

    y = table[_column(table, metric)].to_numpy(dtype=float)
    features = numeric_params(table)
    keep = np.isfinite(y)
    if features.empty:
        raise ValueError("the evaluation table has no varying numeric param columns to analyse")
    if keep.sum() < 4:
        raise ValueError(f"metric {metric!r} has only {int(keep.sum())} finite values; need at least 4")
    X, y = features.to_numpy()[keep], y[keep]
    forest = RandomForestRegressor(n_estimators=n_estimators, random_state=seed, min_samples_leaf=2)
    forest.fit(X, y)
    result = permutation_importance(forest, X, y, n_repeats=n_repeats, random_state=seed)
    out = pd.DataFrame(
        {"importance_mean": result.importances_mean, "importance_std": result.importances_std},
        index=features.columns,
    ).sort_values("importance_mean", ascending=False)
    out.attrs["r2"] = float(forest.score(X, y))
    return out


def plot_metric_vs_param(
    table: pd.DataFrame, param: str, metric: str, path: str | Path, bins: int = 8, seed: int = 0
) -> Path:
    """Plot ``metric``'s mean per quantile bin of ``param`` with 95% bootstrap CIs (Agg backend).

    ``param`` may be given with or without the ``param:`` prefix. Returns the written path.
    """
    from pandemonium.report.plots import pyplot, save_figure

    plt = pyplot()
    pcol, mcol = _column(table, param), _column(table, metric)
    x = table[pcol].astype(float).to_numpy()
    y = table[mcol].astype(float).to_numpy()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size == 0:
        raise ValueError(f"no finite ({param}, {metric}) pairs to plot")
    edges = np.unique(np.quantile(x, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        edges = np.array([x.min() - 0.5, x.max() + 0.5])
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)
    centres, means, lows, highs, counts = [], [], [], [], []
    for b in range(edges.size - 1):
        vals = y[which == b]
        if vals.size == 0:
            continue
        lo, hi = bootstrap_ci(vals, seed=seed + b)
        centres.append(x[which == b].mean())
        means.append(vals.mean())
        lows.append(lo if np.isfinite(lo) else vals.mean())
        highs.append(hi if np.isfinite(hi) else vals.mean())
        counts.append(vals.size)
    centres_a, means_a = np.array(centres), np.array(means)
    err = np.vstack([means_a - np.array(lows), np.array(highs) - means_a])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(x, y, s=8, alpha=0.3, color="grey", label="samples")
    ax.errorbar(centres_a, means_a, yerr=err, marker="o", capsize=3, label="bin mean, 95% bootstrap CI")
    for cx, my, n in zip(centres_a, means_a, counts):
        ax.annotate(f"n={n}", (cx, my), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
    ax.set_xlabel(param.removeprefix(PARAM_PREFIX))
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def failure_report(
    table: pd.DataFrame, out_dir: str | Path, metric: str = "total_delta", top: int = 3, seed: int = 0
) -> dict[str, Path]:
    """Permutation importance of the sampled params for ``metric`` (``importance.csv``) and a
    metric-vs-param plot for each of the ``top`` most important params, written to ``out_dir``.

    Returns ``{"importance": csv path, <param>: plot path, ...}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    importance = param_importance(table, metric, seed=seed)
    paths: dict[str, Path] = {"importance": out_dir / "importance.csv"}
    importance.to_csv(paths["importance"], index_label="param")
    for param in list(importance.index[:top]):
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in param)
        paths[param] = plot_metric_vs_param(table, param, metric, out_dir / f"{metric}_vs_{safe}.png", seed=seed)
    return paths
