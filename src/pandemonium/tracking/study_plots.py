"""The plots and the one-page HTML summary of an Optuna study (``pandemonium tune``).

>>> import optuna                                                     # doctest: +SKIP
>>> study = optuna.create_study(); study.optimize(lambda t: t.suggest_float("x", 0, 1), 5)  # doctest: +SKIP
>>> save_study_plots(study, lambda name: Path("/tmp") / name)         # doctest: +SKIP
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pandemonium.plain import to_plain

log = logging.getLogger(__name__)

__all__ = ["save_study_plots", "save_trials_table", "study_html", "trials_table"]


def save_study_plots(study: Any, path_for: Callable[[str], Path]) -> list[Path]:
    """History, parameter importance and parallel coordinates as PNGs (those the study supports)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    saved: list[Path] = []
    for fname, plot in (("tune_history.png", ovm.plot_optimization_history),
                        ("tune_importance.png", ovm.plot_param_importances),
                        ("tune_parallel.png", ovm.plot_parallel_coordinate)):
        try:
            ax = plot(study)
        except Exception as exc:  # noqa: BLE001 - e.g. importance needs two finished trials
            log.info("tune: no %s (%s)", fname, exc)
            continue
        figure = (ax.flat[0] if hasattr(ax, "flat") else ax).get_figure()
        path = path_for(fname)
        figure.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(figure)
        saved.append(path)
    return saved


def trials_table(study: Any) -> pd.DataFrame:
    """One row per trial: ``number``, ``state``, ``value`` and one column per parameter."""
    rows = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, **t.params}
            for t in study.trials]
    params = sorted({k for t in study.trials for k in t.params})
    return pd.DataFrame(rows, columns=["number", "state", "value", *params])


def save_trials_table(study: Any, path: Path) -> Path:
    """The trials table as CSV at ``path`` (what the report shows)."""
    trials_table(study).to_csv(path, index=False)
    return path


def study_html(study: Any, summary: Mapping[str, Any], pngs: Sequence[Path]) -> str:
    """One self-contained page: the summary, the plots and the trials table."""
    import html

    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "duration"))
    images = "".join(f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                     for p in pngs)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>study {html.escape(str(summary['study']))}"
            f"</title></head><body><h1>Study {html.escape(str(summary['study']))}</h1>"
            f"<pre>{html.escape(json.dumps(to_plain(summary), indent=1))}</pre>{images}"
            f"{frame.to_html(index=False)}</body></html>")
