"""The default callback list and the short names of callbacks for ``_target_`` specs.

>>> [type(c).__name__ for c in default_callbacks(mlflow=False, progress=False)]
['BestPatch', 'PatchFiles', 'Plots', 'TensorBoardLogger', 'Checkpoint']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pandemonium.attack.training.callbacks import (
    BestPatch,
    Callback,
    EarlyStopping,
    LambdaCallback,
    ProgressBar,
)
from pandemonium.attack.training.checkpointing import Checkpoint
from pandemonium.attack.training.loggers import MLflowLogger, TensorBoardLogger
from pandemonium.attack.training.plots import PatchFiles, Plots

__all__ = ["CALLBACKS", "default_callbacks"]

#: short ``_target_`` names of the built-in callbacks
CALLBACKS: dict[str, type[Callback]] = {
    c.__name__: c for c in (BestPatch, EarlyStopping, Checkpoint, MLflowLogger, TensorBoardLogger, PatchFiles,
                            Plots, ProgressBar, LambdaCallback)
}


def default_callbacks(
    *,
    best_metric: str = "total_patch",
    best_mode: str = "min",
    early_stopping: Mapping[str, Any] | None = None,
    checkpoint: bool = True,
    mlflow: bool | str | None = True,
    mlflow_experiment: str | None = None,
    tensorboard: bool = True,
    tensorboard_images: int = 4,
    files: bool = True,
    progress: bool = True,
) -> list[Callback]:
    """The callbacks a fit usually wants, in a working order.

    Args:
        best_metric, best_mode: what :class:`BestPatch` keeps.
        early_stopping: :class:`EarlyStopping` keywords (``metric``/``mode`` default to the best
            patch's); ``None``: off.
        checkpoint: a :class:`Checkpoint` at every evaluation.
        mlflow: :class:`MLflowLogger` ``tracking_uri`` (``True``: SQLite in the results folder; off
            with ``False``/``None``); ``mlflow_experiment`` its experiment.
        tensorboard: a :class:`TensorBoardLogger` keeping ``tensorboard_images`` before/after images.
        files: :class:`PatchFiles` and :class:`Plots` at the end of the fit.
        progress: a :class:`ProgressBar`.
    """
    out: list[Callback] = [BestPatch(best_metric, best_mode)]
    if early_stopping:
        out.append(EarlyStopping(**{"metric": best_metric, "mode": best_mode, **dict(early_stopping)}))
    if files:  # before the MLflow logger, which uploads what they write
        out += [PatchFiles(), Plots()]
    if mlflow not in (None, False):  # before TensorBoard, whose folder name carries the run id
        out.append(MLflowLogger(mlflow, experiment=mlflow_experiment))
    if tensorboard:
        out.append(TensorBoardLogger(images=tensorboard_images))
    if progress:
        out.append(ProgressBar())
    if checkpoint:
        out.append(Checkpoint())
    return out
