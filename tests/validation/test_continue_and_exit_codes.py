"""`continue` replays the interrupted run honestly; exit codes 2 / 1 / 130; every mode ends with a summary."""

from __future__ import annotations

import json

import pytest

from pandemonium.cli.main import main
from pandemonium.runs.file_manager import find_run_dir, run_dirs_of
from pandemonium.runs.journal import CHANGES_FILE, STEPS_FILE, read_continue_changes


def _interrupt_after_first_step(run_dir):
    """What a kill after the first step leaves: one finished step in the journal."""
    lines = (run_dir / STEPS_FILE).read_text().splitlines()
    (run_dir / STEPS_FILE).write_text(lines[0] + "\n")
    return len(lines)


@pytest.fixture
def interrupted(two_tasks_roots, user_configs, capsys):
    """A `recording` run over two tasks (seed 5) interrupted after its first step."""
    assert main(["recording", "task_list=[fake_cls,fake_cls2]", "seed=5", "proj=p"]) == 0
    (run_dir,) = run_dirs_of(two_tasks_roots.out_dir, "p")
    total = _interrupt_after_first_step(run_dir)
    capsys.readouterr()
    return run_dir, total


@pytest.fixture
def two_tasks_roots(pandemonium_roots, fake_task):
    from pandemonium.testing.fixtures import write_fake_task

    write_fake_task(pandemonium_roots.data_dir, name="fake_cls2", num_samples=8, seed=1)
    return pandemonium_roots


def test_continue_refuses_changed_overrides_and_lists_them(interrupted, capsys):
    run_dir, _ = interrupted
    before = (run_dir / STEPS_FILE).read_text()
    assert main(["recording", "proj=p", "continue=latest", "seed=3", "fold=1"]) == 2
    err = capsys.readouterr().err
    assert "seed=5 -> seed=3" in err and "(default) -> fold=1" in err and "allow_changes=true" in err
    assert (run_dir / STEPS_FILE).read_text() == before and not (run_dir / CHANGES_FILE).exists()


def test_continue_replays_the_stored_task_list_and_finishes(interrupted, capsys):
    run_dir, total = interrupted
    # no task_list given: the stored run's (not the default demo tasks) is replayed
    assert main(["recording", "proj=p", "continue=latest"]) == 0
    assert len((run_dir / STEPS_FILE).read_text().splitlines()) == total
    out = capsys.readouterr().out
    assert f"recording: run folder {run_dir}" in out and "produced:" in out


def test_continue_with_allow_changes_records_them(interrupted, capsys):
    run_dir, total = interrupted
    assert main(["recording", "proj=p", "continue=latest", "seed=3", "allow_changes=true"]) == 0
    (record,) = read_continue_changes(run_dir)
    assert record["changes"] == {"seed": ["seed=5", "seed=3"]}
    assert len((run_dir / STEPS_FILE).read_text().splitlines()) == total


def test_latest_is_the_newest_run_of_the_same_mode(two_tasks_roots, user_configs, capsys):
    assert main(["recording", "task_list=[fake_cls]", "proj=p"]) == 0
    assert main(["fault", "task_list=[x]", "proj=p"]) == 0
    (recording_run,) = run_dirs_of(two_tasks_roots.out_dir, "p", mode="recording")
    (fault_run,) = run_dirs_of(two_tasks_roots.out_dir, "p", mode="fault")
    assert find_run_dir(two_tasks_roots.out_dir, "p", "latest") == fault_run
    assert find_run_dir(two_tasks_roots.out_dir, "p", "latest", mode="recording") == recording_run
    _interrupt_after_first_step(recording_run)
    assert main(["recording", "proj=p", "continue=latest"]) == 0
    assert json.loads((recording_run / "plan.json").read_text())["mode"] == "recording"
    assert len((recording_run / STEPS_FILE).read_text().splitlines()) == 2


def test_ctrl_c_exits_130_with_the_command_that_resumes(pandemonium_roots, user_configs, monkeypatch, capsys):
    monkeypatch.setenv("VALIDATION_FAULT", "interrupt")
    assert main(["fault", "proj=p"]) == 130
    err = capsys.readouterr().err
    (run_dir,) = pandemonium_roots.runs("p")
    resume = f"pandemonium fault proj=p out_dir={pandemonium_roots.out_dir} continue={run_dir}"
    assert resume in err and "Traceback" not in err
    assert (run_dir / "plan.json").is_file()  # the interrupted run is kept for `continue`
    monkeypatch.delenv("VALIDATION_FAULT")
    assert main(resume.split()[1:]) == 0
    assert len((run_dir / STEPS_FILE).read_text().splitlines()) == 2


@pytest.mark.parametrize(("fault", "code", "text"), [
    ("failure", 1, "the loss became NaN"),
    ("oserror", 1, "Permission denied"),
])
def test_failures_during_work_exit_1_without_traceback(fault, code, text, pandemonium_roots, user_configs,
                                                       monkeypatch, capsys):
    monkeypatch.setenv("VALIDATION_FAULT", fault)
    assert main(["fault", "proj=p"]) == code
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
    (run_dir,) = pandemonium_roots.runs("p")  # a failure during work keeps its run folder and log
    assert (run_dir / "pandemonium.log").is_file()


def test_summary_shows_artifacts_and_meaningless_run_warnings(pandemonium_roots, user_configs, monkeypatch,
                                                              capsys):
    monkeypatch.setenv("VALIDATION_FAULT", "chance")
    assert main(["fault", "proj=p", "task_list=[t1]"]) == 0
    out = capsys.readouterr().out.splitlines()
    (run_dir,) = pandemonium_roots.runs("p")
    assert out[-3] == f"fault: run folder {run_dir}"
    assert out[-2].startswith("  produced: 1 results")
    assert out[-1].startswith("  WARNING: task 't1': model accuracy 0.100 is at chance level")
