"""A Hydra multirun of `attack` from the CLI, then `report`: the report compares the sweep's jobs."""

from __future__ import annotations

import re

import pytest

from pandemonium.testing.fixtures import write_fake_task

TINY = ("task_list=[fake_cls]", "model=tiny", "trainer=fast", "trainer.lightning.max_epochs=1",
        "attack.steps=3", "attack.num_eval=8", "attack.batch_size=4", "attack.presets.classification.eval_every=3",
        "logging.tensorboard.enabled=false", "proj=sweep")


@pytest.mark.slow
def test_attack_multirun_then_report_compares_the_sweeps_jobs(pandemonium_roots, run_mode):
    write_fake_task(pandemonium_roots.data_dir, size=32, num_samples=24)
    sweep = run_mode("attack", "-m", "attack.lr=0.01,0.05", *TINY, proj="sweep", timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    runs = pandemonium_roots.out_dir / "sweep" / "runs"
    sweeps = sorted(p for p in runs.glob("*_multirun") if p.is_dir())
    assert len(sweeps) == 1, sorted(p.name for p in runs.iterdir())
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]

    report = run_mode("report", "proj=sweep", proj="sweep", timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    pages = sorted((pandemonium_roots.out_dir / "sweep").rglob("*.html"))
    page = next((p.read_text() for p in pages if "Sweep: its jobs compared" in p.read_text()), None)
    assert page is not None, [str(p) for p in pages]
    section = page[page.index("Sweep: its jobs compared"):]
    # one row per job, each with its own override and the task's figures
    for lr in ("attack.lr=0.01", "attack.lr=0.05"):
        assert lr in section
    rows = re.findall(r"<tr[^>]*>.*?</tr>", section, flags=re.S)
    assert sum("fake_cls" in row for row in rows) >= 2
