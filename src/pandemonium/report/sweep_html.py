"""The report's sections for a sweep (its jobs compared) and for tune studies (plots, trials, best).

Rendered by :func:`pandemonium.report.html.render_html`, which hands in its table renderer so the
numbers carry the same ``data-table``/``data-row``/``data-col`` marks as every other table.

>>> import pandas as pd
>>> table = pd.DataFrame({"job": ["0"], "overrides": ["attack.lr=0.1"], "task": ["t"], "metric": ["rate"],
...                       "patched": [0.5], "patched_ci_low": [0.4], "patched_ci_high": [0.6]})
>>> "attack.lr=0.1" in "".join(sweep_parts(table, "sweep", lambda name, t, row_key=None: t.to_html()))
True
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from pandemonium.plain import to_plain
from pandemonium.report.data import StudyReport
from pandemonium.report.figures import figure_to_data_uri

__all__ = ["study_parts", "sweep_figure", "sweep_parts"]

TableHtml = Callable[..., str]
FIGURES = (("patched", "patched"), ("control", "control (no patch)"), ("random", "random patch"))
PLOT_TITLES = {"tune_history": "Optimisation history", "tune_importance": "Parameter importance",
               "tune_parallel": "Parallel coordinates"}


def sweep_figure(table: pd.DataFrame) -> str:
    """Per job (x) and task: each figure with its 95% interval as an error bar; a data URI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = table.reset_index(drop=True)
    labels = [f"{row.job}: {row.overrides}" if row.overrides else str(row.job) for row in table.itertuples()]
    positions = list(dict.fromkeys(labels))
    tasks = list(dict.fromkeys(table["task"]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(positions) + 2), 3.6))
    series = [(task, col, name) for task in tasks for col, name in FIGURES if col in table.columns]
    width = 0.8 / max(1, len(series))
    for k, (task, col, name) in enumerate(series):
        rows = table[table["task"] == task]
        xs = [positions.index(labels[i]) + (k - (len(series) - 1) / 2) * width for i in rows.index]
        values = rows[col].astype(float)
        low = (values - rows.get(f"{col}_ci_low", values).astype(float)).clip(lower=0).fillna(0)
        high = (rows.get(f"{col}_ci_high", values).astype(float) - values).clip(lower=0).fillna(0)
        ax.errorbar(xs, values, yerr=[low, high], fmt="o", capsize=3, label=f"{task} · {name}" if task else name)
    ax.set_xticks(range(len(positions)))
    ax.set_xticklabels(positions, rotation=20, ha="right", fontsize=7)
    ax.set_ylabel(str(table["metric"].iloc[0]) if len(table) else "rate")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return figure_to_data_uri(fig)


def sweep_parts(table: pd.DataFrame | None, sweep_dir: str, table_html: TableHtml) -> list[str]:
    """The sweep section: the comparison plot and the table (one row per job and task)."""
    if table is None or not len(table):
        return []
    esc = html.escape
    parts = ["<h2 id='sweep'>Sweep: its jobs compared</h2>",
             f"<p>The jobs of the multirun <code>{esc(sweep_dir)}</code>, each with its overrides and the "
             "headline figures of its stored evaluation (95% intervals from a bootstrap over scenes).</p>"]
    if any(c in table.columns for c, _ in FIGURES):
        parts.append(f"<img alt='sweep comparison' src='{sweep_figure(table)}'>")
    parts.append(table_html("sweep", table, row_key=["job", "task"]))
    return parts


def study_parts(studies: Sequence[StudyReport], table_html: TableHtml) -> list[str]:
    """Per study: best value and parameters, its plots (embedded PNGs) and its trials table."""
    esc = html.escape
    parts: list[str] = []
    for study in studies:
        name = esc(study.name)
        summary: dict[str, Any] = study.summary
        parts.append(f"<h2 id='study-{name}'>Tune study {name}</h2>")
        counts = ", ".join(f"{k.removeprefix('n_')}: {summary[k]}" for k in ("n_trials", "n_complete", "n_pruned")
                           if k in summary)
        parts.append(f"<p>{esc(counts)}</p>")
        if "best_value" in summary:
            params = summary.get("best_params", {})
            # object dtype: a trial number and integer parameters stay integers beside float values
            best = pd.DataFrame({"parameter": ["best trial", "best value", *params],
                                 "value": pd.Series([summary.get("best_trial"), summary["best_value"],
                                                     *params.values()], dtype=object)})
            parts.append("<h3>Best parameters</h3>" + table_html(f"study/{study.name}/best", best,
                                                                  row_key=["parameter"]))
        else:
            parts.append("<p class='warning'>no finished trial: no best parameters</p>")
        for stem, png in study.plots.items():
            key = next((k for k in PLOT_TITLES if stem.startswith(k)), stem)
            parts.append(f"<h3>{esc(PLOT_TITLES.get(key, stem))}</h3><img alt='{esc(stem)}' "
                         f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>")
        if study.trials is not None and len(study.trials):
            parts.append("<h3>Trials</h3>" + table_html(f"study/{study.name}/trials", study.trials,
                                                         row_key=["number"] if "number" in study.trials else None))
        parts.append(f"<details><summary>stored summary</summary><pre>{esc(json.dumps(to_plain(summary), indent=1))}"
                     "</pre></details>")
    return parts
