from __future__ import annotations

import json

import pytest

from pandemonium.errors import ConfigError
from pandemonium.runs.base import Step
from pandemonium.runs.executors import Executor, LocalExecutor, build_executor, group_steps


def test_group_steps_cuts_at_command_changes():
    steps = [Step(0, "a", ["x"]), Step(1, "a", ["y"]), Step(2, "b", []), Step(3, "a", ["z"])]
    assert [[s.index for s in g] for g in group_steps(steps)] == [[0, 1], [2], [3]]
    assert group_steps([]) == []


def test_build_executor_from_config():
    assert isinstance(build_executor({"_target_": "pandemonium.runs.executors.LocalExecutor"}), LocalExecutor)
    with pytest.raises(ConfigError, match="no _target_"):
        build_executor({})
    with pytest.raises(ConfigError, match="not a pandemonium Executor"):
        build_executor({"_target_": "builtins.dict"})
    with pytest.raises(NotImplementedError):
        next(iter(Executor().run_group(None, [])))


def test_isolated_executor_gives_the_same_results_as_local(run_recording):
    local, local_result = run_recording("proj=local")
    remote, remote_result = run_recording("proj=remote", "executor._target_=orch_schedulers.IsolatedExecutor")
    assert remote_result == pytest.approx(local_result)
    for task in ("fake_cls", "fake_cls2"):
        # paths added in the workers were merged back into the driver's structs
        path = remote.get_struct(task).paths["draws"]
        assert path.is_relative_to(remote.proj_path)
        assert json.loads(path.read_text()) == json.loads(local.get_struct(task).paths["draws"].read_text())
    steps = [json.loads(line)["index"] for line in (remote.run_dir / "steps.jsonl").read_text().splitlines()]
    assert sorted(steps) == [0, 1, 2] and steps[:2] == [1, 0]  # outcomes recorded as they arrive
    assert remote.calls == []  # the driver itself ran nothing
