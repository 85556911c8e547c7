"""File callbacks run at the end of a fit: :class:`PatchFiles` (last and best patch as ``.pt`` and
PNG) and :class:`Plots` (training curves and the evaluation metric over steps).

Each adds what it wrote to ``trainer.artifacts`` (``(path, folder)`` pairs), which
:class:`~pandemonium.attack.training.loggers.MLflowLogger` uploads; so both go before it in the list.

>>> Plots().folder
'plots'
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pandemonium.attack.training.callbacks import Callback

if TYPE_CHECKING:
    from pandemonium.attack.training.trainer import FitResult, PatchTrainer

__all__ = ["PatchFiles", "Plots"]


class PatchFiles(Callback):
    """``patch_last.{pt,png}`` and ``patch_best.{pt,png}`` in ``out_dir`` (``_<name>.png`` per patch of a dict)."""

    def on_fit_end(self, trainer: PatchTrainer, result: FitResult) -> None:
        import torch

        from pandemonium.report.plots import save_patch_png

        files: list[Path] = []
        for name, value in (("patch_last", result.patch), ("patch_best", result.best_patch)):
            torch.save(value, trainer.out_dir / f"{name}.pt")
            files.append(trainer.out_dir / f"{name}.pt")
            if isinstance(value, Mapping):
                files += [save_patch_png(v, trainer.out_dir / f"{name}_{k}.png") for k, v in value.items()]
            else:
                files.append(save_patch_png(value, trainer.out_dir / f"{name}.png"))
        trainer.artifacts += [(f, "patch") for f in files]


class Plots(Callback):
    """``plots/loss.png`` (every logged training term over steps) and ``plots/eval_metric.png`` (the
    best-patch metric at each evaluation)."""

    def __init__(self, folder: str = "plots") -> None:
        self.folder = str(folder)

    def on_fit_end(self, trainer: PatchTrainer, result: FitResult) -> None:
        from pandemonium.report.plots import plot_eval_history, plot_history

        out = trainer.out_dir / self.folder
        if result.history:
            trainer.artifacts.append((plot_history(result.history, out / "loss.png"), "plots"))
        if result.evals:
            trainer.artifacts.append((plot_eval_history(result.evals, result.metric, out / "eval_metric.png"), "plots"))
