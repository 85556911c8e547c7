"""What :meth:`PatchTrainer.fit <pandemonium.attack.training.trainer.PatchTrainer.fit>` returns.

>>> FitResult(patch=None, best_patch=None, best_step=None, best_metric=None, metric="total_patch",
...           steps_run=0, stopped_early=False).history
[]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pandemonium.attack.training.callbacks import BestPatch
from pandemonium.attack.training.patch_module import detached, patch_value

if TYPE_CHECKING:
    from pandemonium.attack.training.trainer import PatchTrainer

__all__ = ["FitResult", "fit_result"]


@dataclass
class FitResult:
    """What :meth:`PatchTrainer.fit` returns: last and best patch, history and where things are."""

    patch: Any
    best_patch: Any
    best_step: int | None
    best_metric: float | None
    metric: str
    steps_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    checkpoint_path: Path | None = None
    eval_table_path: Path | None = None
    out_dir: Path | None = None
    run_id: str | None = None
    seconds: float = 0.0
    eval_seconds: float = 0.0


def fit_result(trainer: PatchTrainer, seconds: float, eval_seconds: float) -> FitResult:
    """The result of ``trainer``'s fit as it stands (artifacts of the last evaluation recorded)."""
    best = trainer.callback(BestPatch)
    if trainer.last_table is not None:
        trainer.artifacts.append((trainer.last_table, "eval"))
        spec = trainer.last_table.with_suffix(".params.json")
        if spec.exists():
            trainer.artifacts.append((spec, "eval"))
    with torch.no_grad():
        patch = detached(patch_value(trainer.patch))
    return FitResult(
        patch=patch, best_patch=best.best_patch(trainer.patch) if best is not None else patch,
        best_step=best.best_step if best is not None else None,
        best_metric=best.best_value if best is not None else None,
        metric=best.metric if best is not None else trainer.monitor, steps_run=trainer.step,
        stopped_early=trainer.should_stop, history=trainer.history, evals=trainer.evals,
        checkpoint_path=trainer.last_checkpoint, eval_table_path=trainer.last_table, out_dir=trainer.out_dir,
        run_id=trainer.run_id, seconds=seconds, eval_seconds=eval_seconds,
    )
