"""The pandemonium CLI. Checks that return before Hydra starts run in-process; full runs use subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pandemonium import __version__
from pandemonium.cli import copy_conf
from pandemonium.cli.main import CONFIG_DIR, compose_config, main
from pandemonium.runs.base import build_scheduler
from pandemonium.testing.fixtures import write_fake_task

SUPPORT = Path(__file__).parent / "support"


def test_help_lists_modes_with_descriptions_and_plugin_modes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for mode in ("info", "create", "clean"):
        line = next(line for line in out.splitlines() if line.strip().startswith(mode + " "))
        assert len(line.split(None, 1)[1]) > 10  # a description follows the name
    assert "example_count" in out  # the example plugin's mode
    assert main([]) == 0


def test_version_lists_plugins(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert f"pandemonium {__version__}" in out
    assert "example" in out and "task:example_stripes" in out and "artifact:example_counts" in out


def test_unknown_mode_is_one_line_with_known_modes(capsys):
    assert main(["frobnicate", "seed=1"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'frobnicate'" in err and "info" in err and "create" in err


def test_malformed_yaml_names_the_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "mode").mkdir()
    bad = tmp_path / "mode" / "broken.yaml"
    bad.write_text("mode:\n  id: broken\n   scheduler: [\n")
    monkeypatch.setenv("PANDEMONIUM_CONFIGS_PATH", str(tmp_path))
    assert main(["info"]) != 0
    err = capsys.readouterr().err
    assert str(bad) in err and "malformed YAML" in err and "line" in err
    monkeypatch.setenv("PANDEMONIUM_CONFIGS_PATH", str(tmp_path / "missing"))
    assert main(["info"]) != 0
    assert "no such folder" in capsys.readouterr().err


def test_copy_conf_copies_the_tree_and_keeps_edits(tmp_path, capsys):
    target = tmp_path / "conf"
    assert copy_conf.main([str(target)]) == 0
    out = capsys.readouterr().out
    assert f"PANDEMONIUM_CONFIGS_PATH={target}" in out
    originals = sorted(p.relative_to(CONFIG_DIR) for p in CONFIG_DIR.rglob("*.yaml"))
    assert sorted(p.relative_to(target) for p in target.rglob("*.yaml")) == originals
    (target / "config.yaml").write_text("edited")
    copy_conf.main([str(target)])
    assert (target / "config.yaml").read_text() == "edited"
    copy_conf.main([str(target), "--force"])
    assert (target / "config.yaml").read_text() == (CONFIG_DIR / "config.yaml").read_text()


def _run_many(cases: list[dict], tmp_path: Path) -> list[dict]:
    """Run CLI cases with ``support/run_many.py``: one subprocess (one torch import) for all of them."""
    cases_file, results_file = tmp_path / "cases.json", tmp_path / "results.json"
    cases_file.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, str(SUPPORT / "run_many.py"), str(cases_file), str(results_file)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(results_file.read_text())
    print("run_many seconds per case:", [r["seconds"] for r in results])
    return results


def _one_error_line(result: dict) -> str:
    errors = [line for line in result["stderr"].splitlines() if line.startswith("pandemonium: error:")]
    assert len(errors) == 1, result["stderr"]
    assert "Traceback" not in result["stderr"]
    return errors[0]


@pytest.mark.slow
def test_cli_runs_seed_scheduler_bad_input_multirun_and_lock(two_tasks, pandemonium_roots, tmp_path):
    """One subprocess runs many CLI invocations (see _run_many); each case is checked on its own."""
    from filelock import FileLock

    user = str(SUPPORT / "configs")
    # the seed's BuzzScheduler + YAML in a folder made by pandemonium-copy-conf
    conf = tmp_path / "my_conf"
    assert copy_conf.main([str(conf)]) == 0
    shutil.copy(SUPPORT / "buzz.yaml", conf / "mode" / "buzz.yaml")
    # finished results that no error may remove
    finished = pandemonium_roots.out_dir / "default" / "MODELS" / "fake_cls" / "models_0001.pt"
    finished.parent.mkdir(parents=True)
    finished.write_bytes(b"model")
    # a corrupt task.json and a missing sample file
    broken = write_fake_task(pandemonium_roots.data_dir, name="broken_json")
    (broken.task_dir / "task.json").write_text("{not json")
    missing = write_fake_task(pandemonium_roots.data_dir, name="missing_file")
    victim = sorted(missing.task_dir.rglob("*.png"))[0]
    victim.unlink()
    # a run whose lock a live process (this one) holds
    locked = build_scheduler(compose_config(["mode=recording", "task_list=[fake_cls]", "proj=locked"],
                                            user_dirs=[user]))
    locked.run()

    bad = {
        "unknown task": (["task_list=[fake_cls,no_such_task]"], "'no_such_task'"),
        "unknown subroutine": (["task_list=[fake_cls]", "mode.subroutines=[a,zz]"], "'zz'"),
        "separator": (["task_list=[fake/cls]"], "'fake/cls'"),
        "bad target": (["task_list=[fake_cls]", "mode.scheduler._target_=nowhere.Missing"], "nowhere.Missing"),
        "corrupt task json": (["task_list=[broken_json]"], "broken_json"),
        "missing sample": (["task_list=[missing_file]"], victim.name),
    }
    cases = [
        {"args": ["buzz", "task_list=[fake_cls,fake_cls2]", "--cfg", "job"], "env": {"PANDEMONIUM_CONFIGS_PATH": str(conf)}},
        {"args": ["buzz", "task_list=[fake_cls,fake_cls2]", "proj=buzz"], "env": {"PANDEMONIUM_CONFIGS_PATH": str(conf)}},
        {"args": ["recording", "task_list=[fake_cls]", "-m", "seed=1,2", "proj=multi"],
         "env": {"PANDEMONIUM_CONFIGS_PATH": user}},
        {"args": ["recording", "task_list=[fake_cls]", "proj=locked", f"continue={locked.run_dir}"],
         "env": {"PANDEMONIUM_CONFIGS_PATH": user}},
        *({"args": ["recording", *overrides], "env": {"PANDEMONIUM_CONFIGS_PATH": user}} for overrides, _ in bad.values()),
    ]
    lock = FileLock(str(locked.run_dir / "run.lock"))
    lock.acquire()
    (locked.run_dir / "run.pid").write_text(str(os.getpid()))
    try:
        shown, buzz, multi, refused, *failures = _run_many(cases, tmp_path)
    finally:
        lock.release()

    # --cfg job prints the composed config of the seed's mode (with its overrides) and runs nothing
    assert shown["code"] == 0, shown["stderr"]
    assert "var_one: 1337" in shown["stdout"] and "sample_num: 1000" in shown["stdout"]
    # the seed's scheduler ran; struct.paths['foo'] set in step_a was seen by step_b
    assert buzz["code"] == 0, buzz["stderr"] + buzz["stdout"]
    proj = pandemonium_roots.out_dir / "buzz"
    (run_dir,) = [p for p in (proj / "runs").iterdir()]
    structs = json.loads((run_dir / "structs.json").read_text())
    for task in ("fake_cls", "fake_cls2"):
        foo = Path(structs[task]["foo"]["__path__"])
        assert foo == proj / "FOO" / task / "foo_0001.pkl"
        assert json.loads(foo.read_text())["train_samples"] > 0
    assert json.loads((proj / "BAZ" / "baz_0001.pkl").read_text())["tasks"] == ["fake_cls", "fake_cls2"]
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "step_b" in (run_dir / "pandemonium.log").read_text()
    # --multirun: one sweep folder, one job folder per value, different draws
    assert multi["code"] == 0, multi["stderr"]
    (sweep,) = [p for p in (pandemonium_roots.out_dir / "multi" / "runs").iterdir()]
    assert sweep.name.endswith("_multirun")
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "steps.jsonl").exists())
    assert jobs == ["0", "1"]
    draws = {json.loads((sweep / j / "structs.json").read_text())["fake_cls"]["draws"]["__path__"] for j in jobs}
    assert len(draws) == 2
    # a second process on a locked run: refused, naming the run dir and the pid
    assert refused["code"] != 0
    line = _one_error_line(refused)
    assert str(locked.run_dir) in line and f"pid {os.getpid()}" in line
    # bad input: one line naming the culprit, non-zero exit, nothing finished removed
    for (case, (_, culprit)), result in zip(bad.items(), failures):
        assert result["code"] not in (0, None), (case, result)
        assert culprit in _one_error_line(result), case
    assert finished.read_bytes() == b"model"


@pytest.mark.slow
def test_killed_run_is_finished_by_continue(run_mode, two_tasks, pandemonium_roots, support_env, tmp_path):
    user = str(SUPPORT / "configs")
    env = {**support_env, "PANDEMONIUM_CONFIGS_PATH": user, "ORCH_TEST_KILL_MARKER": str(tmp_path / "killed")}
    args = ("task_list=[fake_cls,fake_cls2]", "proj=a")
    killed = run_mode("recording", *args, env=env, proj="a")
    assert killed.returncode == -signal.SIGKILL and (tmp_path / "killed").exists()
    run_dir = killed.run_dir
    assert [json.loads(x)["index"] for x in (run_dir / "steps.jsonl").read_text().splitlines()] == [0]
    resumed = run_mode("recording", *args, "continue=latest", env=env, proj="a")
    assert resumed.returncode == 0, resumed.output
    assert resumed.run_dir == run_dir
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()  # the original run's config is kept
    assert "continue=latest" in next(run_dir.glob(".hydra_continue_*/overrides.yaml")).read_text()
    assert [json.loads(x)["index"] for x in (run_dir / "steps.jsonl").read_text().splitlines()] == [0, 1, 2]
    # an uninterrupted run (in-process, other project) ends with the same struct.paths
    straight = build_scheduler(compose_config(["mode=recording", "task_list=[fake_cls,fake_cls2]", "proj=b"],
                                              user_dirs=[user]))
    straight.run()

    def paths(run: Path, proj: str) -> dict:
        return json.loads((run / "structs.json").read_text().replace(str(pandemonium_roots.out_dir / proj), "<proj>"))

    assert paths(run_dir, "a") == paths(straight.run_dir, "b")
    assert set(paths(run_dir, "a")) == {"fake_cls", "fake_cls2"}
    a2 = pandemonium_roots.out_dir / "a" / "DRAWS" / "fake_cls2" / "draws_0001.json"
    b2 = pandemonium_roots.out_dir / "b" / "DRAWS" / "fake_cls2" / "draws_0001.json"
    assert a2.read_text() == b2.read_text()  # the re-run step drew the same random numbers


def test_mode_may_follow_options_and_only_one_mode(capsys):
    from pandemonium.cli.main import split_hydra_args

    assert split_hydra_args(["-m", "info", "seed=1,2", "--cfg", "job", "--info", "x=1"]) == (
        ["-m", "--cfg", "job", "--info", "all"], ["info", "seed=1,2", "x=1"])  # bare --info: "all"
    assert main(["-m", "nosuchmode", "seed=1,2"]) != 0
    assert "'nosuchmode'" in capsys.readouterr().err
    assert main(["info", "create"]) != 0
    assert "one mode" in capsys.readouterr().err
