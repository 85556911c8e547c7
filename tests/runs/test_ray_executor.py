"""executor=ray: same results as the local executor, failures reported per task, bad input refused."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from pandemonium.errors import ConfigError
from pandemonium.runs.base import build_scheduler
from pandemonium.runs.executors import StepFailedError

ray = pytest.importorskip("ray")

SUPPORT = Path(__file__).parent / "support"
SRC = Path(__file__).resolve().parents[2] / "src"
RAY = ("executor=ray",)
TINY_TUNE = ("model=tiny", "trainer=fast", "trainer.lightning.max_epochs=1", "attack.num_eval=8",
             "attack.batch_size=4", "attack.presets.classification.eval_every=2",
             "attack.steps=3",
             "logging.tensorboard.enabled=false")


@pytest.fixture(scope="module")
def kill_marker(tmp_path_factory):
    """Workers SIGKILL themselves in step 1 while this file is missing (see orch_schedulers)."""
    marker = tmp_path_factory.mktemp("ray") / "killed"
    marker.write_text("not this time")
    return marker


@pytest.fixture(scope="module", autouse=True)
def local_ray(kill_marker):
    """One local Ray (2 CPUs) for the module: starting Ray costs seconds."""
    path = os.pathsep.join([str(SUPPORT), str(SRC), *[p for p in sys.path if p and os.path.isdir(p)]])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path, "ORCH_TEST_KILL_MARKER": str(kill_marker)}})
    yield
    ray.shutdown()


def _journal(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def test_ray_gives_the_local_executors_results(run_recording):
    local, local_result = run_recording("proj=local")
    remote, remote_result = run_recording("proj=remote", *RAY)
    assert remote_result == pytest.approx(local_result)
    for task in ("fake_cls", "fake_cls2"):
        path = remote.get_struct(task).paths["draws"]
        assert path.is_relative_to(remote.proj_path)
        assert json.loads(path.read_text()) == json.loads(local.get_struct(task).paths["draws"].read_text())
    assert sorted(r["index"] for r in _journal(remote.run_dir)) == [0, 1, 2]
    assert remote.calls == []  # the driver ran nothing itself, it only recorded


def test_failed_step_is_reported_with_its_worker_traceback(run_recording):
    # step_b alone: the draws of step_a are missing, so it raises KeyError in the worker
    with pytest.raises(StepFailedError) as info:
        run_recording("mode.subroutines=[b]", *RAY)
    text = str(info.value)
    assert "step 0 step_b" in text and "KeyError" in text and "orch_schedulers.py" in text
    assert info.value.exit_code == 1


def test_killed_worker_fails_its_step_and_continue_finishes(run_recording, kill_marker, pandemonium_roots):
    reference, ref_result = run_recording("proj=reference")
    kill_marker.unlink()  # the worker of step 1 (fake_cls2) kills itself with SIGKILL, once
    with pytest.raises(StepFailedError) as info:
        run_recording("proj=killed", *RAY)
    assert kill_marker.exists()
    assert "'fake_cls2'" in str(info.value) and "step 1" in str(info.value)
    run_dir = pandemonium_roots.runs("killed")[-1]
    assert [r["index"] for r in _journal(run_dir)] == [0]  # the other step of the group was kept
    resumed, result = run_recording("proj=killed", f"continue={run_dir}", *RAY)
    assert resumed.run_dir == run_dir
    assert sorted(r["index"] for r in _journal(run_dir)) == [0, 1, 2]
    assert result == pytest.approx(ref_result)


def test_gpu_step_on_a_cluster_without_gpus_is_refused_before_work(run_recording, pandemonium_roots):
    with pytest.raises(ConfigError, match=r"step 0 \(step_a of 'fake_cls'\) needs num_gpus=1 .* has 0"):
        run_recording("proj=gpu", "device=cuda", *RAY)
    run_dir = pandemonium_roots.runs("gpu")[-1]
    assert not (run_dir / "steps.jsonl").exists()


def test_bad_executor_config_is_refused():
    from pandemonium.runs.ray_executor import RayExecutor

    with pytest.raises(ConfigError, match="127.0.0.1:9: no Ray cluster answers"):
        RayExecutor(address="127.0.0.1:9", connect_timeout_s=2).check_address("127.0.0.1:9")
    with pytest.raises(ConfigError, match="expected host:port"):
        RayExecutor().check_address("nowhere")
    with pytest.raises(ConfigError, match="unknown resource 'cpus'"):
        RayExecutor(step_resources={"cpus": 1})


@pytest.mark.slow
def test_tune_trials_run_in_ray_workers_as_mlflow_children(compose, pandemonium_roots):
    import mlflow

    from pandemonium.testing.fixtures import write_fake_task

    write_fake_task(pandemonium_roots.data_dir, num_samples=24, size=16)
    cfg = compose("mode=tune", "task_list=[fake_cls]", *TINY_TUNE, "tune.n_trials=2", "tune.study=ray_study",
                  "logging.mlflow.enabled=true", *RAY)
    scheduler = build_scheduler(cfg)
    summary = scheduler.run()
    assert summary["n_trials"] == 2 and summary["n_complete"] + summary["n_pruned"] == 2
    parent = json.loads((scheduler.run_dir / "mlflow_parent_run.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=parent["tracking_uri"])
    experiment = client.get_run(parent["run_id"]).info.experiment_id
    trials = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent['run_id']}' "
                                                           "and tags.study = 'ray_study'")
    assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1"]
    assert all({"lr", "patch_fraction"} <= set(r.data.params) for r in trials)


def test_a_worker_runs_torch_on_the_cpus_its_task_holds():
    from pandemonium.runs.ray_executor import match_threads_to_cpus

    def threads() -> tuple[int, int]:
        import torch

        return match_threads_to_cpus(), torch.get_num_threads()

    remote = ray.remote(threads)
    # the same worker pool serves both: a worker that ran a 1-CPU task must not keep one thread for 2 CPUs
    for cpus in (1, 2, 1):
        assert ray.get(remote.options(num_cpus=cpus).remote()) == (cpus, cpus)


def _record_fits(run_dir: str, owners: list[str], start: float) -> None:
    import time
    from types import SimpleNamespace

    from pandemonium.modes.steps.fit import fit_dir
    from pandemonium.runs.file_manager import FileManager

    path = Path(run_dir)
    ctx = SimpleNamespace(run_dir=path, fm=FileManager(proj_path=path.parent.parent, run_path=path, reuse={}))
    time.sleep(max(0.0, start - time.time()))  # both workers write at the same time
    for owner in owners:
        fit_dir(ctx, owner)


def test_fits_in_parallel_workers_all_land_in_the_fit_record(tmp_path):
    run_dir = tmp_path / "p" / "runs" / "r"
    run_dir.mkdir(parents=True)
    remote = ray.remote(_record_fits)
    # two workers at once, each adding its fits: a read-modify-write without a lock loses some entries
    owners = [[f"w{w}_t{i}" for i in range(100)] for w in range(2)]
    start = time.time() + 3
    ray.get([remote.options(num_cpus=1).remote(str(run_dir), names, start) for names in owners])
    fits = json.loads((run_dir / "attack_fits.json").read_text())
    assert sorted(fits) == sorted(sum(owners, []))
