"""``kill -9`` at three points of an attack, ``continue`` after each: the record is as if nothing happened.

One attack is killed during the patch fit (after a checkpoint exists), between two steps and during an
evaluation; each kill waits on the process announcing that point (tests/validation/support/kill_points.py),
never on time. After the last ``continue``: MLflow holds exactly one FINISHED run per step with every
logged step of its metrics (the same steps as an uninterrupted run), no RUNNING run, and the project's
artifacts equal an uninterrupted run's (same files, same patches, same figures).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

KILL_POINTS = Path(__file__).parent / "support" / "kill_points.py"
TASKS = "task_list=[shapes_cls,digits]"
ATTACK = ("mode.subroutines=[attack,evaluate]", "attack.steps=6", "attack.presets.classification.eval_every=2", "attack.num_eval=8",
          "attack.batch_size=8", "reuse.models=base")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """Tasks and tiny models of project ``base`` (in-process), and an uninterrupted attack ``ref``."""
    from pandemonium.cli.main import main

    root = tmp_path_factory.mktemp("kill")
    where = (f"data_dir={root / 'data'}", f"out_dir={root / 'results'}")
    assert main(["create", TASKS, "+mode.creator_kwargs.num_samples=48", "+mode.creator_kwargs.image_size=32",
                 *where]) == 0
    assert main(["train", TASKS, "proj=base", "model=tiny", "trainer.lightning.max_epochs=1",
                 "logging.mlflow.enabled=false", *where]) == 0
    assert main(["attack", TASKS, "proj=ref", *ATTACK, *where]) == 0
    return root, where


def _start(point: str, marker: Path, args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, str(KILL_POINTS), point, str(marker), "attack", *args],
                                stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=marker.parent)


def _kill_at(point: str, args: list[str], tmp_path: Path) -> None:
    marker, log = tmp_path / f"{point}.paused", tmp_path / f"{point}.log"
    proc = _start(point, marker, args, log)
    try:
        end = time.monotonic() + 900
        while not marker.exists() and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        assert marker.exists(), f"never reached kill point {point!r}:\n{log.read_text()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()


def _runs(out_dir: Path, proj: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(proj)
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def _name(run) -> str:
    """The run's name, the mode's parent run (named after its run folder) as ``parent``."""
    return "parent" if "pandemonium.mode" in run.data.tags else run.info.run_name


def _history(client, run) -> dict[str, set[int]]:
    return {key: {m.step for m in client.get_metric_history(run.info.run_id, key)} for key in run.data.metrics}


def _artifacts(proj_dir: Path) -> dict[str, Path]:
    """Stored artifacts by path below the project (run folders and temporaries left out, and TensorBoard
    event files: each writer process starts its own file, which TensorBoard reads as one run)."""
    skip = {"runs", "TMP"}
    return {str(p.relative_to(proj_dir)): p for p in sorted(proj_dir.rglob("*"))
            if p.is_file() and p.relative_to(proj_dir).parts[0] not in skip and "tfevents" not in p.name}


def test_attack_killed_three_times_finishes_with_a_true_record(roots, tmp_path):
    from pandemonium.cli.main import main

    root, where = roots
    out_dir = root / "results"
    args = [TASKS, "proj=killed", *ATTACK, *where]
    _kill_at("fit", args, tmp_path)
    steps_file = next((out_dir / "killed" / "runs").iterdir()) / "steps.jsonl"
    assert not steps_file.exists() or not steps_file.read_text().strip()  # killed inside the first step
    resume = ["proj=killed", "continue=latest", *where]
    _kill_at("between", resume, tmp_path)
    assert len(steps_file.read_text().splitlines()) == 1
    _kill_at("evaluation", resume, tmp_path)
    assert [json.loads(line)["command"] for line in steps_file.read_text().splitlines()] == [
        "attack_task", "attack_task"]
    assert main(["attack", *resume]) == 0
    assert sorted(json.loads(line)["index"] for line in steps_file.read_text().splitlines()) == [0, 1, 2, 3]

    client, killed = _runs(out_dir, "killed")
    _, ref = _runs(out_dir, "ref")
    assert not [_name(r) for r in killed if r.info.status == "RUNNING"]
    names = sorted(_name(r) for r in killed)
    assert names == sorted(_name(r) for r in ref), "one run per step, no duplicate of a killed attempt"
    assert all(r.info.status == "FINISHED" for r in killed), [(_name(r), r.info.status) for r in killed]
    ref_by_name = {_name(r): r for r in ref}
    for run in killed:
        assert _history(client, run) == _history(client, ref_by_name[_name(run)]), _name(run)

    mine, theirs = _artifacts(out_dir / "killed"), _artifacts(out_dir / "ref")
    assert sorted(mine) == sorted(theirs), "a killed attempt's files left beside the new ones"
    for name, path in mine.items():
        if name.endswith("patch.pt"):
            assert torch.equal(torch.load(path, weights_only=False)["patch"],
                               torch.load(theirs[name], weights_only=False)["patch"]), name
        if name.endswith("summary.json"):
            a, b = json.loads(path.read_text()), json.loads(theirs[name].read_text())
            for key in ("rate", "rate_ci_low", "rate_ci_high", "n_rows"):
                assert a.get(key) == b.get(key), (name, key)
