from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pandemonium.testing.fixtures import write_fake_task

SUPPORT = Path(__file__).parent / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))  # orch_schedulers / foo.bar for in-process tests


@pytest.fixture
def compose(pandemonium_roots):
    """compose("mode=recording", "task_list=[a]", user_dirs=[...]) -> DictConfig (no $PANDEMONIUM_CONFIGS_PATH)."""
    from pandemonium.cli.main import compose_config

    def _compose(*overrides: str, user_dirs=()):
        return compose_config(list(overrides), user_dirs=list(user_dirs))

    return _compose


@pytest.fixture
def two_tasks(pandemonium_roots, fake_task):
    """fake_cls (from the fixture) and fake_cls2."""
    second = write_fake_task(pandemonium_roots.data_dir, name="fake_cls2", num_samples=8, seed=1)
    return [fake_task, second]


@pytest.fixture
def rec_cfg(compose, two_tasks):
    """rec_cfg(*overrides) -> the config of the test mode ``recording`` over fake_cls and fake_cls2."""
    def make(*extra: str):
        return compose("mode=recording", "task_list=[fake_cls,fake_cls2]", *extra, user_dirs=[SUPPORT / "configs"])

    return make


@pytest.fixture
def run_recording(rec_cfg):
    """run_recording(*overrides) -> (the scheduler, what its run() returned)."""
    from pandemonium.runs.base import build_scheduler

    def run(*extra: str):
        scheduler = build_scheduler(rec_cfg(*extra))
        return scheduler, scheduler.run()

    return run


@pytest.fixture
def support_env(pandemonium_roots):
    """Environment for CLI subprocesses that import the test schedulers."""
    path = os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path}
