"""The built-in modes info / create / clean, run in-process (same code path as the CLI minus Hydra's runner)."""

from __future__ import annotations

import logging
import os
import time

import pytest
from PIL import Image

from pandemonium.errors import UnknownTaskError
from pandemonium.runs.base import build_scheduler

log = logging.getLogger(__name__)


def test_info_shows_tasks_grids_and_stored_artifacts(compose, fake_task, pandemonium_roots, capsys):
    model = pandemonium_roots.out_dir / "default" / "MODELS" / "fake_cls" / "models_0001.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"weights")
    sched = build_scheduler(compose("mode=info", "task_list=[fake_cls]"))
    summary = sched.run()
    entry = summary["fake_cls"]
    assert entry["type"] == "classification" and entry["samples"] == 12
    assert entry["classes"] == ["dark", "bright"] and entry["image_size"] == [8, 8]
    assert entry["folds"] == 2 and entry["test"] == fake_task.num_test
    with Image.open(entry["grid"]) as grid:
        assert grid.format == "PNG" and grid.size[0] > 50
    assert entry["artifacts"] == {"models": [str(model)]}
    out = capsys.readouterr().out
    assert "fake_cls" in out and "classification" in out and "models: 1" in out


def test_info_without_task_list_lists_tasks_on_disk(compose, fake_task, capsys):
    summary = build_scheduler(compose("mode=info", "task_list=[]", "mode.subroutines=[tasks]")).run()
    assert list(summary) == ["fake_cls"]
    assert "creatable" in capsys.readouterr().out


def test_create_skips_existing_unless_forced_and_rejects_unknown(compose, fake_task, pandemonium_roots):
    task_json = fake_task.task_dir / "task.json"
    before = task_json.stat().st_mtime_ns
    summary = build_scheduler(compose("mode=create", "task_list=[fake_cls]")).run()
    assert summary["fake_cls"]["status"] == "kept" and task_json.stat().st_mtime_ns == before
    with pytest.raises(UnknownTaskError, match="'nope'.*digits"):
        build_scheduler(compose("mode=create", "task_list=[digits,nope]")).run()
    assert not (pandemonium_roots.data_dir / "tasks" / "digits").exists()  # checked before any work


@pytest.mark.slow
def test_create_builtin_tasks(compose, pandemonium_roots):
    cfg = compose("mode=create", "tasks=builtin")
    assert list(cfg.task_list) == ["shapes_cls", "shapes_seg", "shapes_det", "digits"]
    start = time.perf_counter()
    summary = build_scheduler(cfg).run()
    seconds = time.perf_counter() - start
    log.warning("pandemonium create of the 4 built-in tasks took %.1f s", seconds)
    print(f"pandemonium create of the 4 built-in tasks took {seconds:.1f} s")
    assert all(entry["status"] == "created" for entry in summary.values())
    for task in cfg.task_list:
        assert (pandemonium_roots.data_dir / "tasks" / task / "task.json").is_file()


def test_clean_removes_tmp_and_old_checkpoints_but_never_results(compose, pandemonium_roots):
    proj = pandemonium_roots.out_dir / "default"
    tmp_file = proj / "TMP" / "t" / "scratch.bin"
    checkpoints = [proj / "PATCH_CHECKPOINTS" / "t" / f"patch_checkpoints_000{i}.pt" for i in (1, 2, 3)]
    results = [proj / "MODELS" / "t" / "models_0001.pt", proj / "PATCHES" / "t" / "patches_0001.pt",
               proj / "REPORTS" / "report_0001.html", proj / "EVAL_TABLES" / "t" / "eval_tables_0001.csv"]
    half_task = pandemonium_roots.data_dir / "tasks" / ".tmp-digits-1-abc"
    for i, path in enumerate([tmp_file, *checkpoints, *results]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    half_task.mkdir(parents=True)

    dry = build_scheduler(compose("mode=clean")).run()
    assert dry["removed"] == [] and tmp_file.exists() and all(p.exists() for p in checkpoints)
    assert set(dry["would_remove"]) == {str(proj / "TMP"), str(checkpoints[0]), str(checkpoints[1]), str(half_task)}

    done = build_scheduler(compose("mode=clean", "mode.force=true")).run()
    assert set(done["removed"]) == set(dry["would_remove"])
    assert not (proj / "TMP").exists() and not half_task.exists()
    assert [p.exists() for p in checkpoints] == [False, False, True]  # the newest checkpoint is kept
    assert all(p.exists() for p in results)
