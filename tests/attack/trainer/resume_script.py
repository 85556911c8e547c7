"""Run by test_trainer_resume: a fit that kills itself with SIGKILL mid-fit, after a checkpoint."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pandemonium.attack.training import LambdaCallback  # noqa: E402
from trainer.test_trainer_resume import STEPS, make_resume_trainer  # noqa: E402


def kill_mid_fit(trainer, step, logs):
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    make_resume_trainer(Path(sys.argv[1]), LambdaCallback(on_step_end=kill_mid_fit)).fit(STEPS)
    sys.exit("the fit was supposed to be killed")
