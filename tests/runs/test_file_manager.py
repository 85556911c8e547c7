from __future__ import annotations

import json
import os
import time

import pytest

from pandemonium.errors import ConfigError
from pandemonium.runs.file_manager import (
    DEFAULT_ASSIGNMENTS,
    FileManager,
    allocate_run_dir,
    find_run_dir,
    infer_suffix,
)


@pytest.fixture
def fm(tmp_path):
    return FileManager(proj_path=tmp_path / "res" / "proj", run_path=tmp_path / "res" / "proj" / "runs" / "r1")


def test_registered_keys_cover_the_cross_layer_contract():
    for key in ("models", "patches", "patch_checkpoints", "eval_tables", "pipelines", "predictions",
                "reports", "plots", "transfer", "sample_grids"):
        assert key in DEFAULT_ASSIGNMENTS


def test_registered_key_layout_and_numbering_never_overwrites(fm):
    first = fm.construct_saving_path(obj={"a": 1}, key="eval_tables", task_name="shapes_cls")
    assert first == fm.proj_path / "EVAL_TABLES" / "shapes_cls" / "eval_tables_0001.json"
    first.write_text("keep me")
    second = fm.construct_saving_path(obj={"a": 1}, key="eval_tables", task_name="shapes_cls")
    assert second.name == "eval_tables_0002.json"
    assert first.read_text() == "keep me"
    # an explicit file name that exists is numbered instead of overwritten
    named = fm.construct_saving_path(obj=None, key="plots", task_name="t", file_name="curve.png")
    named.write_text("x")
    again = fm.construct_saving_path(obj=None, key="plots", task_name="t", file_name="curve.png")
    assert (named.name, again.name) == ("curve.png", "curve_0001.png")


def test_unregistered_key_gets_default_path_with_suffix_from_type(fm):
    class Thing:
        pass

    path = fm.construct_saving_path(obj=Thing(), key="foo", task_name="digits")
    assert path == fm.proj_path / "FOO" / "digits" / "foo_0001.pkl"
    glob = fm.construct_saving_path(obj=[1, 2], key="baz")
    assert glob == fm.proj_path / "BAZ" / "baz_0001.json"


def test_infer_suffix():
    import numpy as np
    import torch

    assert infer_suffix(torch.zeros(2)) == ".pt"
    assert infer_suffix({"w": torch.zeros(1)}) == ".pt"
    assert infer_suffix(torch.nn.Linear(1, 1)) == ".pt"
    assert infer_suffix(np.zeros(2)) == ".npy"
    assert infer_suffix({"a": 1}) == ".json"
    assert infer_suffix("x.png") == ".png"


def test_creation_log_records_every_path(fm):
    a = fm.construct_saving_path(obj=None, key="models", task_name="t")
    b = fm.construct_saving_path(obj=None, key="foo")
    records = [json.loads(line) for line in (fm.run_path / "artifacts.jsonl").read_text().splitlines()]
    assert [(r["key"], r["task_name"], r["path"]) for r in records] == [
        ("models", "t", str(a)), ("foo", None, str(b))]
    assert fm.created_paths() == records


@pytest.mark.parametrize("bad", ["a/b", "..", "", "a\\b"])
def test_names_with_separators_are_refused(fm, bad):
    with pytest.raises(ConfigError, match="task name"):
        fm.construct_saving_path(obj=None, key="models", task_name=bad)


def test_add_assignment_path_instance_and_class(fm, tmp_path):
    fm.add_assignment_path("heat", "{run_path}/HEAT/{task_name}/{file_name}")
    assert fm.construct_saving_path(obj=None, key="heat", task_name="t").parent == fm.run_path / "HEAT" / "t"
    other = FileManager(tmp_path / "p2", tmp_path / "p2" / "runs" / "r")
    assert "heat" not in other.assignments  # instance registration stays local
    FileManager.add_assignment_path("heat2", "{proj_path}/H2/{file_name}")
    try:
        assert FileManager(tmp_path / "p3", tmp_path / "r3").template_for("heat2").endswith("H2/{file_name}")
    finally:
        FileManager.remove_assignment_path("heat2")
    assert "heat2" not in FileManager(tmp_path / "p4", tmp_path / "r4").assignments
    with pytest.raises(ConfigError, match="template"):
        FileManager.add_assignment_path("bad", "/abs/{file_name}")


def test_reuse_attaches_newest_artifact_of_earlier_project(tmp_path):
    res = tmp_path / "res"
    old = FileManager(res / "old", res / "old" / "runs" / "r")
    first = old.construct_saving_path(obj=None, key="models", task_name="t")
    first.write_text("1")
    second = old.construct_saving_path(obj=None, key="models", task_name="t")
    second.write_text("2")
    os.utime(first, (time.time() - 100, time.time() - 100))
    old.construct_saving_path(obj=None, key="models", task_name="t")  # reserved, still empty: ignored
    new = FileManager(res / "new", res / "new" / "runs" / "r", reuse={"models": "old", "patches": None})
    paths = new.attach_reused({}, "t")
    assert paths == {"models": second}
    assert new.attach_reused({}, "other_task") == {}
    with pytest.raises(ConfigError, match="no project 'nope'.*old"):
        FileManager(res / "new", res / "new" / "runs" / "r", reuse={"models": "nope"}).attach_reused({}, "t")


def test_tmp_paths_live_under_project_tmp(fm):
    path = fm.get_tmp_path("scratch.bin", task_name="t")
    assert path.parent == fm.proj_path / "TMP" / "t" and path.parent.is_dir()


def test_run_dirs_allocate_and_find(tmp_path):
    a = allocate_run_dir(tmp_path, "p")
    b = allocate_run_dir(tmp_path, "p")
    assert a != b and a.parent == b.parent == tmp_path / "p" / "runs"
    assert find_run_dir(tmp_path, "p", "latest") is None  # no plan.json yet
    (a / "plan.json").write_text("{}")
    assert find_run_dir(tmp_path, "p", "latest") == a
    assert find_run_dir(tmp_path, "p", a.name) == a
    assert find_run_dir(tmp_path, "p", str(a)) == a
    (b / "plan.json").write_text("{}")
    assert find_run_dir(tmp_path, "p", "latest") == b
    assert find_run_dir(tmp_path, "p", "nothing") is None
