"""The patch trainer: a small loop (:class:`PatchTrainer`) and callbacks for everything around it.

>>> from pandemonium.attack.training import PatchTrainer, EvaluationSettings, default_callbacks  # doctest: +SKIP
>>> trainer = PatchTrainer(pipeline, loss, {"targeted": 1.0}, patch=(3, 16, 16), batch_size=8,  # doctest: +SKIP
...                        evaluation=EvaluationSettings(num_eval=32, every=25),
...                        callbacks=[*default_callbacks(mlflow=False), MyCallback()])
"""

from __future__ import annotations

from pandemonium.attack.training.callbacks import (
    BestPatch,
    Callback,
    CallbackSettingError,
    EarlyStopping,
    LambdaCallback,
    MetricNotFoundError,
    ProgressBar,
)
from pandemonium.attack.training.checkpointing import Checkpoint
from pandemonium.attack.training.config import EvaluationSettings, TrainerSettingError
from pandemonium.attack.training.defaults import CALLBACKS, default_callbacks
from pandemonium.attack.training.distributed import DistributedFitError, rank_zero_only, shard_seed
from pandemonium.attack.training.loggers import MLflowLogger, TensorBoardLogger
from pandemonium.attack.training.patch_module import PatchDict, PatchSpecError, TensorPatch, patch_to_image
from pandemonium.attack.training.plots import PatchFiles, Plots
from pandemonium.attack.training.steps import NonFiniteLossError
from pandemonium.attack.training.trainer import FitResult, PatchTrainer

__all__ = [
    "CALLBACKS",
    "BestPatch",
    "Callback",
    "CallbackSettingError",
    "Checkpoint",
    "DistributedFitError",
    "EarlyStopping",
    "EvaluationSettings",
    "FitResult",
    "LambdaCallback",
    "MLflowLogger",
    "MetricNotFoundError",
    "NonFiniteLossError",
    "PatchDict",
    "PatchFiles",
    "PatchSpecError",
    "PatchTrainer",
    "Plots",
    "ProgressBar",
    "TensorBoardLogger",
    "TensorPatch",
    "TrainerSettingError",
    "default_callbacks",
    "rank_zero_only",
    "shard_seed",
    "patch_to_image",
]
