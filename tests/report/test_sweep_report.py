"""The report of a sweep compares its jobs; the report of a tune study shows its plots, trials and best."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

from pandemonium.modes.steps.sweep import newest_sweep, read_sweep, study_reports, sweep_table
from pandemonium.modes.tune import TuneScheduler
from pandemonium.report.data import ReportData, format_number
from pandemonium.report.html import extract_numbers, render_html
from pandemonium.runs.file_manager import ARTIFACT_LOG_NAME, FileManager

# job number -> (override, patched rate, its interval, control rate); the two jobs differ in every figure
JOBS = {"0": ("attack.lr=0.01", 0.42, (0.31, 0.55), 0.05), "1": ("attack.lr=0.05", 0.81, (0.70, 0.90), 0.07)}


def _fake_sweep(proj: Path, stamp: str, jobs: dict = JOBS) -> Path:
    """A multirun folder as Hydra and the FileManager leave it: overrides and artifact log per job."""
    sweep = proj / "runs" / f"{stamp}_multirun"
    for num, (override, rate, (low, high), control) in jobs.items():
        run = sweep / num
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- mode=attack\n- {override}\n")
        summary_path = proj / "EVAL_SUMMARIES" / "fake_cls" / f"eval_summary_{num}.json"
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps({
            "metric": "attack_success", "attack_success": rate, "attack_success_ci_low": low,
            "attack_success_ci_high": high, "attack_success_control": control,
            "attack_success_control_ci_low": control / 2, "attack_success_control_ci_high": control * 2}))
        records = [{"key": "patches", "task_name": "fake_cls", "path": str(proj / "PATCHES" / "x.pt")},
                   {"key": "eval_summaries", "task_name": "fake_cls", "path": str(summary_path)}]
        (run / ARTIFACT_LOG_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    return sweep


def test_sweep_table_holds_each_jobs_overrides_and_figures(tmp_path):
    _fake_sweep(tmp_path, "20260101_000000", {"0": ("attack.lr=0.5", 0.1, (0.0, 0.2), 0.0)})
    newest = _fake_sweep(tmp_path, "20260102_000000")
    (newest / "2" / ".hydra").mkdir(parents=True)  # a job that died before its evaluation
    (newest / "2" / ".hydra" / "overrides.yaml").write_text("- attack.lr=9\n")
    assert newest_sweep(tmp_path) == newest
    table = sweep_table(read_sweep(newest)).set_index("job")
    assert list(table.index) == ["0", "1", "2"]
    for num, (override, rate, (low, high), control) in JOBS.items():
        row = table.loc[num]
        assert row["overrides"] == f"mode=attack {override}" and row["task"] == "fake_cls"
        assert (row["patched"], row["patched_ci_low"], row["patched_ci_high"]) == (rate, low, high)
        assert row["control"] == control
    assert table.loc["2", "overrides"] == "attack.lr=9" and table.loc["2", "patched"] != table.loc["2", "patched"]
    # no job measured a random patch: no empty random columns
    assert "random" not in table.columns and "patched_minus_random" not in table.columns


def test_sweep_comparison_reaches_the_html(tmp_path):
    sweep = _fake_sweep(tmp_path, "20260102_000000")
    page = render_html(ReportData(title="t", sweep=sweep_table(read_sweep(sweep)), sweep_dir=str(sweep)))
    tables, _ = extract_numbers(page)
    for num, (override, rate, (low, high), _control) in JOBS.items():
        row = tables["sweep"][f"{num}/fake_cls"]
        assert row["overrides"] == f"mode=attack {override}"
        assert [row["patched"], row["patched_ci_low"], row["patched_ci_high"]] == [
            format_number(rate), format_number(low), format_number(high)]
    assert "alt='sweep comparison' src='data:image/png;base64," in page


@pytest.fixture()
def finished_study(tmp_path):
    """``TuneScheduler.summarize_study`` run on a 5-trial in-memory study (2 parameters)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("lr", 1e-3, 1e-1, log=True) * t.suggest_int("steps", 1, 9), 5)
    fm = FileManager(tmp_path / "proj", tmp_path / "proj" / "runs" / "r1")
    owner = SimpleNamespace(load_study=lambda: study, study_name=lambda: "lr_search",
                            storage_url=lambda: "sqlite:///x.db", fm=fm, study_summary=None)
    summary = TuneScheduler.summarize_study(owner)
    return study, fm, summary


def test_study_plots_trials_and_best_reach_the_report(finished_study):
    study, fm, summary = finished_study
    studies = study_reports(fm.list_artifacts("plots", task_name="*"))
    assert [s.name for s in studies] == ["lr_search"]
    assert {"tune_history", "tune_importance", "tune_parallel"} <= set(studies[0].plots)
    page = render_html(ReportData(title="t", studies=studies))
    tables, _ = extract_numbers(page)
    for stem in ("tune_history", "tune_importance", "tune_parallel"):
        assert f"<img alt='{stem}' src='data:image/png;base64," in page
    trials = tables["study/lr_search/trials"]
    assert len(trials) == len(study.trials) == 5
    for trial in study.trials:
        row = trials[str(trial.number)]
        assert row["value"] == format_number(trial.value) and row["state"] == "complete"
        assert row["lr"] == format_number(trial.params["lr"]) and row["steps"] == str(trial.params["steps"])
    best = tables["study/lr_search/best"]
    assert best["best trial"]["value"] == str(study.best_trial.number) == str(summary["best_trial"])
    assert best["steps"]["value"] == str(study.best_params["steps"])
    assert best["best value"]["value"] == format_number(study.best_value)
    assert best["lr"]["value"] == format_number(study.best_params["lr"])
