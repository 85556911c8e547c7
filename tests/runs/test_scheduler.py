"""AbstractBaseScheduler in-process: plan, step log, struct.paths persistence, continue, lock, seeding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from filelock import FileLock
from orch_schedulers import RecordingScheduler

from pandemonium.errors import (
    ConfigError,
    ContinueError,
    RunLockedError,
    UnknownSubroutineError,
    UnknownTaskError,
)
from pandemonium.runs.base import AbstractBaseScheduler, active_run_dir, build_scheduler

SUPPORT = Path(__file__).parent / "support"


def test_run_writes_plan_steps_structs_and_returns_finish_value(rec_cfg, pandemonium_roots):
    sched = build_scheduler(rec_cfg())
    assert isinstance(sched, RecordingScheduler)
    result = sched.run()
    run_dir = sched.run_dir
    assert run_dir.parent == pandemonium_roots.out_dir / "default" / "runs"
    plan = json.loads((run_dir / "plan.json").read_text())
    assert [(s["command"], s["params"]) for s in plan["steps"]] == [
        ("step_a", ["fake_cls"]), ("step_a", ["fake_cls2"]), ("step_b", [])]
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["index"] for s in steps] == [0, 1, 2]
    # run() returns finish(), by default the value of the last step (step_b's sum)
    draws = [json.loads(sched.get_struct(t).paths["draws"].read_text())["python"] for t in ("fake_cls", "fake_cls2")]
    assert result == pytest.approx(sum(draws))
    stored = json.loads((run_dir / "structs.json").read_text())
    assert stored["fake_cls"]["draws"] == {"__path__": str(sched.get_struct("fake_cls").paths["draws"])}
    assert sched.hooks == ["after_preparation", "before_finishing"]
    assert not (run_dir / "run.pid").exists()


def test_steps_are_seeded_from_seed_and_index(rec_cfg):
    first = build_scheduler(rec_cfg())
    first.run()
    second = build_scheduler(rec_cfg())
    second.run()
    other_seed = build_scheduler(rec_cfg("seed=7"))
    other_seed.run()

    def draws(s, task):
        return json.loads(s.get_struct(task).paths["draws"].read_text())

    assert draws(first, "fake_cls") == draws(second, "fake_cls")
    a, b = draws(first, "fake_cls"), draws(first, "fake_cls2")
    assert all(a[k] != b[k] for k in ("python", "numpy", "torch", "generator"))  # per-step streams
    assert draws(other_seed, "fake_cls")["python"] != a["python"]


def test_subroutine_selection_and_unknown_subroutine(rec_cfg):
    sched = build_scheduler(rec_cfg("mode.subroutines=[b,a]"))
    assert sched.subroutines == ["b", "a"]
    with pytest.raises(UnknownSubroutineError, match="'c'.*available: a, b"):
        build_scheduler(rec_cfg("mode.subroutines=[a,c]"))


def test_unknown_task_lists_known_tasks(compose, fake_task):
    cfg = compose("mode=recording", "task_list=[fake_cls,nope]", user_dirs=[SUPPORT / "configs"])
    with pytest.raises(UnknownTaskError, match="'nope'.*fake_cls"):
        build_scheduler(cfg).run()


def test_task_name_with_separator_is_refused(compose, fake_task):
    cfg = compose("mode=recording", "task_list=[fake_cls,../etc]", user_dirs=[SUPPORT / "configs"])
    with pytest.raises(ConfigError, match=r"task name '\.\./etc'"):
        build_scheduler(cfg)


def test_bad_target_names_it(compose, fake_task):
    cfg = compose("mode=recording", "mode.scheduler._target_=no_such_pkg.Sched", user_dirs=[SUPPORT / "configs"])
    with pytest.raises(ConfigError, match="no_such_pkg.Sched"):
        build_scheduler(cfg)


class FlakyScheduler(RecordingScheduler):
    """Fails in the second step once (an in-process stand-in for a crash between steps)."""

    fail = True

    def step_a(self, task_name):
        if self.step_index == 1 and FlakyScheduler.fail:
            FlakyScheduler.fail = False
            raise RuntimeError("crash")
        return super().step_a(task_name)


def test_continue_skips_finished_steps_and_restores_paths(rec_cfg, pandemonium_roots):
    with pytest.raises(RuntimeError):
        FlakyScheduler(rec_cfg()).run()
    resumed = FlakyScheduler(rec_cfg("continue=latest"))
    resumed.run()
    assert resumed.calls == [("step_a", ("fake_cls2",)), ("step_b", ())]  # step 0 was not repeated
    reference = RecordingScheduler(rec_cfg("proj=reference"))
    reference.run()

    def rel(sched):
        return {t: {k: str(v).replace(str(sched.proj_path), "") for k, v in s.paths.items()}
                for t, s in sched.structs.items()}

    assert rel(resumed) == rel(reference)
    # the restored value keeps its type (Path stays Path, nested containers too)
    assert isinstance(resumed.get_struct("fake_cls").paths["draws"], Path)
    assert isinstance(resumed.get_struct("fake_cls").paths["nested"]["dir"], Path)
    draws_resumed = json.loads(resumed.get_struct("fake_cls2").paths["draws"].read_text())
    draws_reference = json.loads(reference.get_struct("fake_cls2").paths["draws"].read_text())
    assert draws_resumed == draws_reference


def test_continue_refuses_a_different_plan_and_missing_runs(rec_cfg):
    build_scheduler(rec_cfg()).run()
    with pytest.raises(ContinueError, match="plan differs"):
        build_scheduler(rec_cfg("continue=latest", "mode.subroutines=[b]")).run()
    with pytest.raises(ContinueError, match="no resumable run"):
        build_scheduler(rec_cfg("continue=latest", "proj=never_ran"))


def test_second_process_on_the_same_run_is_refused(rec_cfg):
    first = build_scheduler(rec_cfg())
    first.run()
    holder = FileLock(str(first.run_dir / "run.lock"))
    holder.acquire()
    (first.run_dir / "run.pid").write_text("4242")
    try:
        with pytest.raises(RunLockedError, match=rf"{first.run_dir}.*pid 4242"):
            build_scheduler(rec_cfg("continue=latest")).run()
    finally:
        holder.release()
    assert (first.run_dir / "steps.jsonl").exists()


def test_active_run_dir_is_used(rec_cfg, tmp_path):
    target = tmp_path / "given"
    with active_run_dir(target):
        sched = build_scheduler(rec_cfg())
    sched.run()
    assert (target / "plan.json").exists()


def test_mismatched_commands_and_params(rec_cfg):
    class Broken(RecordingScheduler):
        def create_routine(self):
            self.commands.append(self.step_b)

    with pytest.raises(ConfigError, match="1 commands but 0 parameter lists"):
        Broken(rec_cfg()).run()


def test_struct_is_shared_between_steps_and_create_datamodule(rec_cfg):
    sched = build_scheduler(rec_cfg())
    struct = sched.get_struct("fake_cls")
    assert sched.get_struct("fake_cls") is struct
    datamodule = sched.create_datamodule(struct)
    datamodule.setup("fit")
    assert len(datamodule.train_dataloader().dataset) > 0


def test_abstract_scheduler_requires_create_routine(rec_cfg):
    sched = AbstractBaseScheduler(rec_cfg(), available_subroutines=["a", "b"])
    with pytest.raises(NotImplementedError):
        sched.run()


def test_reuse_attaches_artifacts_of_an_earlier_project(rec_cfg):
    old = build_scheduler(rec_cfg("proj=old"))
    old.run()
    new = build_scheduler(rec_cfg("proj=new", "+reuse.draws=old", "mode.subroutines=[b]"))
    assert new.get_struct("fake_cls").paths["draws"] == old.get_struct("fake_cls").paths["draws"]
    assert new.run() == pytest.approx(old.last_result)  # step_b alone works on the reused artifacts
    with pytest.raises(ConfigError, match="reuse.models=nowhere"):
        build_scheduler(rec_cfg("proj=new", "reuse.models=nowhere")).get_struct("fake_cls")


def test_unserialisable_struct_path_is_named(rec_cfg):
    class Bad(RecordingScheduler):
        def step_b(self):
            self.get_struct("fake_cls").paths["oops"] = object()

    with pytest.raises(ConfigError, match=r"struct.paths\['oops'\] of task 'fake_cls'"):
        Bad(rec_cfg()).run()
