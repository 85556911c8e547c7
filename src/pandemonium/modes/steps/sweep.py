"""What the report shows of a sweep and of a tune study, gathered from a project's folders.

**Sweep** (a Hydra multirun, ``pandemonium attack -m attack.lr=0.01,0.05``): its jobs run in
``<proj>/runs/<timestamp>_multirun/<job number>/``, each with its overrides (``.hydra/overrides.yaml``)
and its artifact log (``artifacts.jsonl``), which names the evaluation summaries the job stored
(``EVAL_SUMMARIES/<task>/*.json``). :func:`sweep_table` lines the jobs up: one row per job and task
with the job's overrides and its headline figures (patched, control, random patch, patched - random),
each with its 95% interval, read from the stored summaries (never recomputed). ``pandemonium report``
of the project shows the newest sweep (:func:`newest_sweep`) after the task sections.

**Study** (``pandemonium tune``): ``summarize_study`` stores ``PLOTS/<study>/tune_best*.json`` naming
its plots and trials table; :func:`study_reports` reads the newest of each study.

>>> sweep_table([]).columns[:4].tolist()
['job', 'overrides', 'task', 'metric']
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pandemonium.modes.steps import EVAL_SUMMARY_KEY
from pandemonium.modes.steps.evaluate_patch import HEADLINE_FIGURES
from pandemonium.plain import as_float
from pandemonium.report.data import StudyReport, read_table
from pandemonium.runs.file_manager import ARTIFACT_LOG_NAME, RUNS_DIR_NAME

log = logging.getLogger(__name__)

__all__ = ["SweepJob", "newest_sweep", "read_sweep", "study_reports", "sweep_table", "SWEEP_SUFFIX"]

SWEEP_SUFFIX = "_multirun"
STUDY_RECORD = "tune_best"
# column names of the table: the headline figure labels of the report, as plain identifiers
FIGURE_COLUMNS = {"": "patched", "_control": "control", "_random": "random", "_diff_vs_random": "patched_minus_random"}


@dataclass
class SweepJob:
    """One job of a multirun: its number, its overrides and its summaries by task."""

    number: str
    run_dir: Path
    overrides: list[str] = field(default_factory=list)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)


def newest_sweep(proj_path: str | Path) -> Path | None:
    """The newest ``<proj>/runs/*_multirun`` folder (run stamps sort by time), or None."""
    runs = Path(proj_path) / RUNS_DIR_NAME
    found = sorted(p for p in runs.glob(f"*{SWEEP_SUFFIX}") if p.is_dir()) if runs.is_dir() else []
    return found[-1] if found else None


def _job_sort_key(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def _job_summaries(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The newest evaluation summary per task that the job's artifact log names."""
    log_path = run_dir / ARTIFACT_LOG_NAME
    out: dict[str, dict[str, Any]] = {}
    if not log_path.is_file():
        return out
    for line in log_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line) if line.strip() else {}
        path = Path(str(record.get("path", "")))
        if record.get("key") != EVAL_SUMMARY_KEY or path.suffix != ".json" or not path.is_file():
            continue
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:  # a job killed while writing: its figures are missing, not wrong
            log.warning("sweep: unreadable evaluation summary %s (job %s) skipped", path, run_dir.name)
            continue
        out[str(record.get("task_name") or summary.get("task") or path.parent.name)] = summary
    return out


def read_sweep(sweep_dir: str | Path) -> list[SweepJob]:
    """The jobs of a multirun folder, by job number."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for run_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                          key=_job_sort_key):
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = [str(o) for o in (yaml.safe_load(overrides_file.read_text()) or [])] \
            if overrides_file.is_file() else []
        jobs.append(SweepJob(run_dir.name, run_dir, overrides, _job_summaries(run_dir)))
    return jobs


def sweep_table(jobs: Sequence[SweepJob]) -> pd.DataFrame:
    """One row per job and task: ``job, overrides, task, metric`` and per headline figure its value,
    ``_ci_low`` and ``_ci_high`` (nan where the job's summary lacks it). A job without a summary keeps
    a row (task empty, figures nan) so a failed job shows as such."""
    columns = ["job", "overrides", "task", "metric"]
    for name in FIGURE_COLUMNS.values():
        columns += [name, f"{name}_ci_low", f"{name}_ci_high"]
    rows = []
    for job in jobs:
        for task, summary in (job.summaries or {"": {}}).items():
            metric = str(summary.get("metric", "rate")) if summary else ""
            row: dict[str, Any] = {"job": job.number, "overrides": " ".join(job.overrides), "task": task,
                                   "metric": metric}
            for _label, suffix in HEADLINE_FIGURES:
                name, key = FIGURE_COLUMNS[suffix], f"{metric}{suffix}"
                row[name] = as_float(summary.get(key))
                row[f"{name}_ci_low"] = as_float(summary.get(f"{key}_ci_low"))
                row[f"{name}_ci_high"] = as_float(summary.get(f"{key}_ci_high"))
            rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    # figures no job has (e.g. no random-patch baseline in this sweep) are left out, not shown as nan
    empty = [c for c in columns[4:] if table[c].map(lambda v: not math.isfinite(as_float(v))).all()]
    return table.drop(columns=empty) if len(table) else table


def study_reports(plot_files: Sequence[str | Path]) -> list[StudyReport]:
    """The newest stored summary (``tune_best*.json``) of each study among ``plot_files`` (the project's
    ``plots`` artifacts, oldest first), with the plots and trials table it names."""
    newest: dict[Path, Path] = {}
    for path in map(Path, plot_files):
        if path.name.startswith(STUDY_RECORD) and path.suffix == ".json":
            newest[path.parent] = path  # later files win: the newest summary of that study's folder
    studies = []
    for folder, record in sorted(newest.items()):
        summary = json.loads(record.read_text(encoding="utf-8"))
        plots = {Path(p).stem: Path(p).read_bytes() for p in summary.get("plots", [])
                 if Path(p).suffix == ".png" and Path(p).is_file()}
        trials_path = summary.get("trials")
        trials = read_table(trials_path) if trials_path and Path(trials_path).is_file() else None
        studies.append(StudyReport(name=str(summary.get("study", folder.name)), summary=summary,
                                   plots=plots, trials=trials))
    return studies
