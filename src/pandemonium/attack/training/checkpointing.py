"""The :class:`Checkpoint` callback: write the whole training state at every evaluation.

What a checkpoint holds (see :meth:`PatchTrainer.state_dict`): step, patch, optimiser, schedule,
history, every RNG state (torch, python, numpy, each stage's generator) and the ``state_dict()`` of
every callback under its ``state_key``. ``PatchTrainer.fit(steps, resume_from=path)`` (or
``resume_from="auto"``) restores all of it, so the resumed fit ends bit for bit where an
uninterrupted one does (CPU).

>>> Checkpoint().filename
'last.pt'
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pandemonium.attack.training.callbacks import Callback

if TYPE_CHECKING:
    from pandemonium.attack.evaluation import EvalResult
    from pandemonium.attack.training.trainer import PatchTrainer

__all__ = ["Checkpoint"]


class Checkpoint(Callback):
    """Atomically writes ``<dirpath>/<filename>`` after every evaluation (always the last callback).

    Args:
        dirpath: folder of the checkpoint (default: ``<trainer.out_dir>/checkpoints``).
        filename: file name of the rolling checkpoint.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "last.pt") -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = str(filename)

    def path(self, trainer: PatchTrainer) -> Path:
        """Where this callback writes the trainer's checkpoint."""
        return (self.dirpath if self.dirpath is not None else trainer.out_dir / "checkpoints") / self.filename

    def on_evaluation_end(self, trainer: PatchTrainer, step: int, result: EvalResult) -> None:
        trainer.save_checkpoint(self.path(trainer))
