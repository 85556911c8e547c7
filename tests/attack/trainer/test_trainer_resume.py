"""A fit killed with SIGKILL and resumed from its checkpoint ends with the same patch, bit for bit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pandemonium.attack.checkpoint import load_checkpoint
from pandemonium.attack.training import EvaluationSettings, PatchTrainer, default_callbacks

from .toys import PATCH, ToyLoss, toy_pipeline

STEPS = 10
KILL_AT = 7  # checkpoints are written at steps 0, 3, 6, 9, 10


def make_resume_trainer(out_dir: Path, *extra_callbacks) -> PatchTrainer:
    return PatchTrainer(
        toy_pipeline(seed=11), ToyLoss(), {"target": 1.0, "logit0": 0.1}, patch=(3, PATCH, PATCH), batch_size=6,
        evaluation=EvaluationSettings(num_eval=8, batch_size=8, every=3),
        optimizer={"_target_": "mifgsm", "lr": 0.03, "mu": 0.9}, schedule="cosine", seed=2, out_dir=out_dir,
        callbacks=[*default_callbacks(mlflow=False, progress=False), *extra_callbacks],
    )


@pytest.mark.slow  # spawns a Python process (imports torch) and kills it
def test_killed_fit_resumes_bit_for_bit(tmp_path):
    killed_dir = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("resume_script.py")), str(killed_dir), str(KILL_AT)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpt_path = killed_dir / "checkpoints" / "last.pt"
    assert load_checkpoint(ckpt_path)["step"] == 6
    assert not list((killed_dir / "checkpoints").glob("*.tmp"))

    resumed = make_resume_trainer(killed_dir).fit(STEPS, resume_from=ckpt_path)
    straight = make_resume_trainer(tmp_path / "straight").fit(STEPS)

    assert resumed.steps_run == straight.steps_run == STEPS
    assert torch.equal(resumed.patch, straight.patch)
    assert torch.equal(resumed.best_patch, straight.best_patch)
    assert resumed.best_step == straight.best_step
    assert [h["total"] for h in resumed.history] == [h["total"] for h in straight.history]
    assert resumed.evals == straight.evals
    # and the patch actually moved, so equality is not trivial
    assert not torch.equal(straight.patch, torch.full_like(straight.patch, 0.5))
