"""executor=ray starts Ray in the background while the driver prepares, and stops it whatever happens."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pandemonium.errors import ConfigError
from pandemonium.runs.base import build_scheduler

ray = pytest.importorskip("ray")

SUPPORT = Path(__file__).parent / "support"
RAY = ("executor=ray", "executor.num_cpus=2")


@pytest.fixture(autouse=True)
def no_ray_running():
    """These tests start their own local Ray through the executor (another module's Ray is stopped)."""
    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


def _starter_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pandemonium-ray-start"]


def _draws(scheduler) -> dict[str, dict]:
    return {task: json.loads(scheduler.get_struct(task).paths["draws"].read_text())
            for task in ("fake_cls", "fake_cls2")}


def test_background_start_warms_the_workers_and_gives_the_local_results(run_recording):
    local, local_result = run_recording("proj=local")
    remote, remote_result = run_recording("proj=remote", *RAY)
    assert remote_result == pytest.approx(local_result)
    assert _draws(remote) == _draws(local)
    assert remote.calls == []  # the steps ran in Ray workers
    executor = remote._executor
    assert executor.start_early
    # one warm-up task per CPU of the local Ray (importing the scheduler's module)
    assert executor.warm_tasks == 2 and all(s >= 0 for s in executor.warm_seconds)
    assert not ray.is_initialized()  # stopped once the plan ran
    for thread in _starter_threads():
        thread.join(timeout=10)
    assert not _starter_threads()  # the starting thread ended with its Ray


def test_start_early_false_starts_ray_when_the_first_step_is_due(run_recording):
    scheduler, result = run_recording("proj=late", *RAY, "executor.start_early=false")
    assert result is not None
    assert scheduler._executor.warm_tasks == 0  # no background start, no warm-up tasks
    assert not ray.is_initialized()


def test_a_plan_that_fails_after_the_start_stops_ray(rec_cfg):
    from orch_schedulers import RecordingScheduler

    class FailingPlan(RecordingScheduler):
        def after_preparation_hook(self) -> None:
            raise ConfigError("refused while Ray was starting")

    scheduler = FailingPlan(rec_cfg("proj=failing", *RAY))
    with pytest.raises(ConfigError, match="refused while Ray was starting"):
        scheduler.run()
    assert not ray.is_initialized()
    for thread in _starter_threads():
        thread.join(timeout=10)
    assert not _starter_threads()


def test_an_unreachable_address_is_refused_before_the_plan(compose, two_tasks, pandemonium_roots):
    cfg = compose("mode=recording", "task_list=[fake_cls]", "proj=nowhere", "executor=ray",
                  "executor.address=127.0.0.1:9", "executor.connect_timeout_s=2", user_dirs=[SUPPORT / "configs"])
    scheduler = build_scheduler(cfg)
    with pytest.raises(ConfigError, match="127.0.0.1:9: no Ray cluster answers"):
        scheduler.run()
    assert scheduler.hooks == []  # refused before the scheduler prepared anything
    assert not (scheduler.run_dir / "plan.json").exists()
