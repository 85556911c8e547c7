"""BackgroundTaskCreation: a forked child makes the same task files as the caller would."""

from __future__ import annotations

import sys

import pytest

from pandemonium.tasks import create_task
from pandemonium.tasks.background import BackgroundTaskCreation
from pandemonium.tasks.errors import TaskCreationError

from .conftest import TINY, folder_digest

#: the kwargs the session's tiny_data_dir made shapes_cls with
TINY_CLS = TINY["shapes_cls"]


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the child is a fork (Linux only)")


def _start(names, data_dir):
    job = BackgroundTaskCreation.start(names, data_dir, seed=0, kwargs=TINY_CLS)
    if job is None:
        pytest.skip("a single usable core: tasks are created in the caller")
    return job


def test_child_creates_the_same_files_as_the_caller(tiny_data_dir, tmp_path):
    seconds = _start(["shapes_cls"], tmp_path).wait()
    assert set(seconds) == {"shapes_cls"} and seconds["shapes_cls"] > 0
    assert folder_digest(tmp_path / "tasks" / "shapes_cls") == folder_digest(tiny_data_dir / "tasks" / "shapes_cls")


def test_a_failing_creator_leaves_the_rest_to_the_caller(tmp_path):
    job = _start(["shapes_cls", "no_such_task"], tmp_path)
    with pytest.raises(TaskCreationError, match="no_such_task"):
        job.wait()
    assert (tmp_path / "tasks" / "shapes_cls" / "task.json").is_file()  # what it made before the failure stays
    with pytest.raises(Exception, match="no_such_task"):  # the caller's own attempt names the culprit
        create_task("no_such_task", tmp_path, seed=0)
