"""Logging callbacks: :class:`MLflowLogger` (one run per fit) and :class:`TensorBoardLogger`.

Both import their library only when a fit starts, so building a trainer stays cheap.

>>> MLflowLogger(tracking_uri=False).enabled
False
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pandemonium.attack.evaluation import FixedEvaluation
from pandemonium.attack.training.callbacks import Callback
from pandemonium.attack.training.patch_module import patch_value

if TYPE_CHECKING:
    from pandemonium.attack.evaluation import EvalResult
    from pandemonium.attack.training.trainer import FitResult, PatchTrainer

__all__ = ["MLflowLogger", "TensorBoardLogger"]

log = logging.getLogger(__name__)

_STATS_SUFFIXES = ("_se", "_ci_low", "_ci_high", "_n")


def _artifact_location(uri: str) -> Path | None:
    """Artifacts of a SQLite-tracked run go to ``mlartifacts/`` beside the database file."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
    return None


class MLflowLogger(Callback):
    """One MLflow run per fit: settings as params, step and evaluation metrics, patches and plots.

    A child run when a run is already active (a mode's run); the same run again when a fit is
    resumed (its id is this callback's state). Per-step metrics are buffered and written at each
    evaluation, off the training loop's critical path.

    Args:
        tracking_uri: ``True`` (SQLite ``mlflow.db`` in the trainer's ``out_dir``, or the active
            run's store), a tracking URI, or ``False``/``None`` (off).
        experiment: experiment name (default: MLflow's default, or the active run's).
        resume_run_id: the run of an interrupted attempt of this fit (e.g.
            ``ModeTracking.resumable_child``); a fit that resumes no checkpoint reopens it instead of
            opening a second run of the same name, so one run holds the whole metric history.
    """

    def __init__(self, tracking_uri: bool | str | None = True, experiment: str | None = None,
                 resume_run_id: str | None = None) -> None:
        self.requested = tracking_uri
        self.experiment = experiment
        self.resume_run_id = resume_run_id
        self.uri: str | None = None
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self._stack = contextlib.ExitStack()
        self._buffer: Any = None
        self._error: BaseException | None = None

    @property
    def enabled(self) -> bool:
        return self.requested not in (None, False)

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.run_id = state.get("run_id")

    def reset(self) -> None:
        self.run_id = None

    def setup(self, trainer: PatchTrainer) -> None:
        """Resolve and check the tracking URI now, so an unreachable server fails before any work."""
        if not self.enabled:
            return
        from pandemonium.tracking.mlflow_utils import check_tracking_uri, resolve_tracking_uri

        uri = resolve_tracking_uri(None if self.requested is True else str(self.requested), trainer.out_dir)
        loaded = sys.modules.get("mlflow")  # only look for a parent run if MLflow is in use already
        active = loaded.active_run() if loaded is not None else None
        if self.requested is True and active is not None:
            uri = loaded.get_tracking_uri()  # inside a mode's run: the child goes where the parent is
        self.uri = check_tracking_uri(uri)
        # a fit on several processes (Fabric DDP) logs from rank 0, where no parent run is active
        same_store = active is not None and self.uri == loaded.get_tracking_uri()
        self.parent_run_id = active.info.run_id if same_store else None

    def on_fit_start(self, trainer: PatchTrainer) -> None:
        if self.uri is None:
            return
        import mlflow

        from pandemonium.tracking.mlflow_utils import MetricBuffer, start_run, use_tracking_uri

        self._error = None
        uri = self.uri
        if mlflow.active_run() is not None and self.requested is True:
            uri = mlflow.get_tracking_uri()  # inside a mode's run: the child run goes where the parent is
        self._stack.enter_context(use_tracking_uri(uri))
        # the checkpoint's run when the fit resumes one, else the killed attempt's run it was handed
        resume_id = (self.run_id if trainer.step else None) or self.resume_run_id
        if resume_id is not None:
            try:
                mlflow.MlflowClient().get_run(resume_id)
            except Exception:  # the run lives in another store: start a new one
                log.warning("MLflow run %s of the checkpoint not found in %s; starting a new run", resume_id, uri)
                resume_id = None
        pipeline = trainer.pipeline
        description = pipeline.get_description() if hasattr(pipeline, "get_description") else ""
        parent = self.parent_run_id if resume_id is None and mlflow.active_run() is None else None
        run = self._stack.enter_context(
            start_run(name=trainer.run_name, run_id=resume_id, experiment=self.experiment, parent_run_id=parent,
                      artifact_location=_artifact_location(uri), tags={"pandemonium.kind": "patch_fit"},
                      description=description if resume_id is None else None)
        )
        self.run_id = run.info.run_id
        trainer.run_id = self.run_id
        self._buffer = MetricBuffer(self.run_id)
        if resume_id is None:
            self._log_setup(trainer)

    def _log_setup(self, trainer: PatchTrainer) -> None:
        import mlflow
        import yaml

        from pandemonium.tracking.mlflow_utils import log_flat_params

        log_flat_params(trainer.hparams(), prefix="trainer", artifact_file="trainer_params_not_logged.yaml")
        if hasattr(trainer.pipeline, "to_config"):
            cfg = trainer.pipeline.to_config()
            log_flat_params(cfg, prefix="pipeline", artifact_file="pipeline_params_not_logged.yaml")
            path = trainer.out_dir / "pipeline.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            mlflow.log_artifact(str(path))

    def on_step_end(self, trainer: PatchTrainer, step: int, logs: dict[str, float]) -> None:
        if self._buffer is not None:
            self._buffer.add({f"train/{k}": v for k, v in logs.items() if k != "step"}, step)

    def on_evaluation_end(self, trainer: PatchTrainer, step: int, result: EvalResult) -> None:
        if self._buffer is not None:
            self._buffer.add({f"eval/{k}": v for k, v in result.summary.items() if not math.isnan(v)}, step)
            self._buffer.flush()

    def on_exception(self, trainer: PatchTrainer, error: BaseException) -> None:
        self._error = error
        if self.run_id is not None and self._buffer is not None:
            import mlflow

            self._buffer.flush()
            mlflow.set_tag("pandemonium.failure", str(error)[:5000])

    def on_fit_end(self, trainer: PatchTrainer, result: FitResult) -> None:
        """Every file the fit registered in ``trainer.artifacts``, and the best value of the fit."""
        if self._buffer is None:
            return
        import mlflow

        self._buffer.flush()
        for path, folder in trainer.artifacts:
            mlflow.log_artifact(str(path), artifact_path=folder)
        if result.best_metric is not None:
            mlflow.log_metric(f"best/{result.metric}", result.best_metric, step=result.best_step or 0)

    def teardown(self, trainer: PatchTrainer) -> None:
        try:
            if self._buffer is not None:
                self._buffer.flush()
        except Exception as err:  # never let a logging failure hide the fit's own error or result
            log.warning("flushing MLflow metrics failed: %s", err)
        self._buffer = None
        error = self._error
        # the run ends FAILED when the fit raised, FINISHED otherwise
        self._stack.__exit__(type(error) if error else None, error, error.__traceback__ if error else None)
        self._stack = contextlib.ExitStack()


class TensorBoardLogger(Callback):
    """TensorBoard events in ``<out_dir>/tensorboard/<run_name>``: step scalars, evaluation scalars
    and histograms, the patch, before/after images and the stages' own ``log_vizualizations``.

    Args:
        images: evaluation images kept for the before/after panel.
    """

    def __init__(self, images: int = 4) -> None:
        self.images = int(images)
        self.writer: Any = None

    def on_fit_start(self, trainer: PatchTrainer) -> None:
        from pandemonium.tracking.tensorboard_utils import make_writer

        run_id = trainer.run_id
        name = trainer.run_name + (f"-{run_id[:8]}" if run_id else "")
        self.writer = make_writer(trainer.out_dir, name, purge_step=trainer.step if trainer.step else None)

    def on_step_end(self, trainer: PatchTrainer, step: int, logs: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in logs.items():
                if key != "step":
                    self.writer.add_scalar(f"train/{key}", value, global_step=step)

    def on_evaluation_end(self, trainer: PatchTrainer, step: int, result: EvalResult) -> None:
        if self.writer is None:
            return
        from pandemonium.tracking.tensorboard_utils import (
            log_before_after,
            log_histograms,
            log_patch,
            log_scalars,
        )

        summary = {f"eval/{k}": v for k, v in result.summary.items()
                   if not math.isnan(v) and not k.endswith(_STATS_SUFFIXES)}
        log_scalars(self.writer, summary, step)
        cols = {c: result.table[c].to_numpy() for c in FixedEvaluation.value_columns(result.table)}
        log_histograms(self.writer, cols, step)
        with torch.no_grad():
            log_patch(self.writer, "patch", patch_value(trainer.patch), step)
        log_before_after(self.writer, result.images, step)
        self.writer.flush()

    def teardown(self, trainer: PatchTrainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
