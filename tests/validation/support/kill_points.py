"""``python kill_points.py <point> <marker> <pandemonium args...>``: the CLI, paused for a SIGKILL at a point.

At ``point`` the process writes ``marker`` and sleeps, so a test kills it exactly there (never on time):

- ``fit`` (``fit=<run name>``: of that fit only, e.g. ``fit=attack/shapes_det``): after the first patch
  checkpoint of the fit is on disk (metrics up to it logged);
- ``between``: after the first step's record is in ``steps.jsonl``, before the next step starts;
- ``evaluation``: inside the first evaluation step, its files written, before its MLflow run is logged.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def _pause(marker: Path) -> None:
    marker.write_text("paused")
    while True:  # until the test's SIGKILL
        time.sleep(60)


def install(point: str, marker: Path) -> None:
    if point.split("=", 1)[0] == "fit":
        from pandemonium.attack.training.checkpointing import Checkpoint

        original = Checkpoint.on_evaluation_end
        name = point.split("=", 1)[1] if "=" in point else None

        def on_evaluation_end(self, trainer, step, result):
            original(self, trainer, step, result)
            if name is None or trainer.run_name == name:
                _pause(marker)

        Checkpoint.on_evaluation_end = on_evaluation_end
    elif point == "between":
        from pandemonium.runs.base import AbstractBaseScheduler

        record = AbstractBaseScheduler.record_outcome

        def record_outcome(self, step, outcome):
            record(self, step, outcome)
            _pause(marker)

        AbstractBaseScheduler.record_outcome = record_outcome
    elif point == "evaluation":
        from pandemonium.tracking.mode_run import ModeTracking

        def log_evaluation(self, task, summary):
            _pause(marker)

        ModeTracking.log_evaluation = log_evaluation
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, marker, *args = sys.argv[1:]
    install(point, Path(marker))
    from pandemonium.cli.main import main

    raise SystemExit(main(args))
