"""``PatchTrainer``: a pipeline + a loss + term weights -> a trained patch.

The loop is here; everything around it (best patch, early stopping, checkpoints, MLflow,
TensorBoard, files, the progress bar) is a callback (:mod:`~pandemonium.attack.training.callbacks`).

>>> trainer = PatchTrainer(pipeline, loss, {"untargeted": 1.0, "tv": 0.1},          # doctest: +SKIP
...                        patch=(3, 16, 16), batch_size=16,
...                        optimizer={"_target_": "mifgsm", "lr": 2 / 255, "mu": 1.0},
...                        evaluation=EvaluationSettings(num_eval=64, every=50),
...                        callbacks=default_callbacks(best_metric="untargeted_success", best_mode="max",
...                                                    early_stopping={"patience": 5}),
...                        out_dir="results/fit")
>>> result = trainer.fit(500)                                                       # doctest: +SKIP
>>> result.best_patch.shape, result.best_metric                                    # doctest: +SKIP

Results folder (``out_dir``), with the default callbacks::

    mlflow.db, mlartifacts/          MLflowLogger (SQLite) and its artifacts
    tensorboard/<run>/               TensorBoardLogger
    checkpoints/last.pt              Checkpoint, at every evaluation; fit(resume_from=...)
    eval/eval_step<k>.parquet        per-sample evaluation table (+ .params.json: param types)
    patch_last.{pt,png}, patch_best.{pt,png}, pipeline.yaml, plots/

Several devices (:mod:`~pandemonium.attack.training.distributed`, Lightning Fabric DDP)::

    PatchTrainer(..., batch_size=64, devices=4, accelerator="cuda")   # 4 GPUs, 16 samples each
    PatchTrainer(..., batch_size=8, devices=2, accelerator="cpu")     # 2 CPU processes (gloo)
    pandemonium attack attack.devices=4 attack.accelerator=cuda      # the same from the attack config

Each device draws a disjoint ``batch_size / devices`` share of every batch from its own streams
(seeded from the run seed and its rank), the patch gradient is averaged over the devices, process 0
alone logs and writes checkpoints, and ``fit(resume_from=...)`` works as with one device (the
checkpoint keeps every rank's streams). *Within tolerance* means: a ``devices=W`` fit and the same fit
with ``strategy="serial"`` (one process drawing the ``W`` shards from the same streams, the same total
batch) end with patches whose largest absolute difference is at most ``1e-5`` after tens of steps on
CPU (float32; only the order of the gradient sums differs). A plain ``devices=1`` fit draws the batch
from one stream, so it is a different (equally valid) sample: compare it statistically, not bit-wise.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pandemonium.attack.checkpoint import isolated_rng, load_checkpoint, save_checkpoint
from pandemonium.attack.evaluation import EvalResult, FixedEvaluation, save_table
from pandemonium.attack.optimizers import build_optimizer, optimizer_spec
from pandemonium.attack.replay import check_replay
from pandemonium.attack.rows import expand_patch
from pandemonium.attack.schedules import build_schedule, is_plateau
from pandemonium.attack.training.callbacks import BestPatch, Callback, EarlyStopping, require_metric
from pandemonium.attack.training.checkpointing import Checkpoint
from pandemonium.attack.training.config import (
    EvaluationSettings,
    TrainerSettingError,
    derived_seed,
    trainer_kwargs,
)
from pandemonium.attack.training.defaults import default_callbacks
from pandemonium.attack.training.distributed import shard_plan
from pandemonium.attack.training.loggers import MLflowLogger, TensorBoardLogger
from pandemonium.attack.training.patch_module import as_patch_module, patch_value
from pandemonium.attack.training.result import FitResult, fit_result
from pandemonium.attack.training.state import restore_state, trainer_state
from pandemonium.attack.training.steps import NonFiniteLossError, StepRunner
from pandemonium.testing import check_loss

__all__ = ["FitResult", "NonFiniteLossError", "PatchTrainer"]

log = logging.getLogger(__name__)


class PatchTrainer:
    """Optimise a patch through a pipeline against a loss (see the module docstring).

    Args:
        pipeline: a :class:`~pandemonium.attack.pipeline.Pipeline` (or any stage with the contract).
        loss: ``loss(outputs, **kwargs) -> {term: Tensor(B)}``.
        weights: ``{term: weight}``; weighted terms are optimised, all terms are logged.
        patch: a patch module (``forward() -> (C, h, w)``, optional ``project_()``), a ``(C, h, w)``
            tensor, a ``(C, h, w)`` shape (grey start) or a dict of those (several patches).
        batch_size: training batch size.
        evaluation: the fixed evaluation (:class:`EvaluationSettings`: samples, batch, every, target).
        optimizer: a spec for :func:`~pandemonium.attack.optimizers.build_optimizer`: a short name,
            an import path or ``{"_target_": ..., **settings}``.
        schedule: a spec for :func:`~pandemonium.attack.schedules.build_schedule` (name or mapping).
        callbacks: callback objects (``None``: :func:`default_callbacks`); a ``Checkpoint`` runs last.
        seed: the run seed. The pipeline's stages are re-seeded from it (``pipeline.set_seed``), so a
            fit depends on the seed alone; the evaluation conditions use a seed derived from it.
            ``None`` keeps the pipeline's current streams.
        device: where the pipeline and the patch live.
        out_dir: results folder (default ``results/fits/<time>``).
        run_name: names the MLflow run, the TensorBoard folder and the progress bar.
        grad_accumulation: micro-batches per optimiser step.
        sharpness_aware: SAM radius ``rho`` (None: off); the ascent step replays exactly the sampled
            conditions of the step (``params=`` replay).
        devices: processes (one per device) sharing each batch (see the module docstring); 1: the
            plain loop, no Fabric. With more, each process uses Fabric's device, not ``device``.
        accelerator: Fabric's accelerator when ``devices > 1`` (``"cpu"``, ``"cuda"``, ``"auto"``).
        strategy: ``"ddp"`` (default with ``devices > 1``) or ``"serial"`` (the ``devices`` shards in
            this process: the single-process reference of a multi-device fit).
    """

    def __init__(
        self,
        pipeline: nn.Module,
        loss: Callable[..., Mapping[str, Tensor]],
        weights: Mapping[str, float],
        patch: Any = (3, 32, 32),
        batch_size: int = 8,
        *,
        evaluation: EvaluationSettings | None = None,
        optimizer: str | Mapping[str, Any] = "adam",
        schedule: str | Mapping[str, Any] | None = "none",
        callbacks: Sequence[Callback] | None = None,
        seed: int | None = 0,
        device: str | torch.device = "cpu",
        out_dir: str | Path | None = None,
        run_name: str = "patch-fit",
        grad_accumulation: int = 1,
        sharpness_aware: float | None = None,
        devices: int = 1,
        accelerator: str = "cpu",
        strategy: str | None = None,
    ) -> None:
        if batch_size < 1 or grad_accumulation < 1:
            raise TrainerSettingError(
                f"PatchTrainer: batch_size ({batch_size}) and grad_accumulation ({grad_accumulation}) must be >= 1"
            )
        if sharpness_aware is not None and sharpness_aware <= 0:
            raise TrainerSettingError(f"PatchTrainer: sharpness_aware (rho) must be > 0, got {sharpness_aware}")
        self.sharding = shard_plan(devices, batch_size, accelerator, strategy)
        # processes get their device from Fabric; CUDA stays untouched here so they can be forked
        self.device = torch.device("cpu" if self.sharding is not None and self.sharding.launches else device)
        self.pipeline = pipeline.to(self.device)
        self.loss = loss
        self.weights = {str(k): float(v) for k, v in dict(weights).items()}
        self.patch = as_patch_module(patch).to(self.device)
        if not any(p.requires_grad for p in self.patch.parameters()):
            raise TrainerSettingError("PatchTrainer: the patch module has no trainable parameters")
        self.batch_size = int(batch_size)
        self.settings = evaluation if evaluation is not None else EvaluationSettings()
        self.optimizer_spec = optimizer_spec(optimizer)
        self.schedule_spec = schedule
        self.grad_accumulation = int(grad_accumulation)
        self.sharpness_aware = sharpness_aware
        if seed is not None and hasattr(self.pipeline, "set_seed"):
            if hasattr(self.pipeline, "stages"):
                self.pipeline.set_seed(int(seed))
            else:  # a single stage: position 0
                self.pipeline.set_seed(int(seed), 0)
        self.seed = int(seed if seed is not None else getattr(self.pipeline, "seed", 0))
        self.run_name = run_name
        self.out_dir = Path(out_dir) if out_dir is not None else (
            Path("results") / "fits" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        )
        given = list(default_callbacks() if callbacks is None else callbacks)
        # Lightning's rule: a checkpoint runs after every other callback, so it saves their fresh state
        self.callbacks = [c for c in given if not isinstance(c, Checkpoint)] + [
            c for c in given if isinstance(c, Checkpoint)]
        self.term_names = self._check_loss_on_test_batch()
        # at construction, with the loss check: fails before any work, and once, not on every fit()
        self._check_replay()
        self.evaluation = FixedEvaluation(
            self.pipeline, self.loss, self.weights, num_eval=self.settings.num_eval,
            batch_size=self.settings.batch_size or self.batch_size, seed=derived_seed("evaluation", self.seed),
            target_class=self.settings.target_class, split=self.settings.split,
        )
        # rebuilt by fit() (cosine needs the number of steps); built here so a bad optimiser or
        # schedule fails at construction, not after the first evaluation
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.max_steps = max(1, self.settings.every)
        self._build(self.max_steps)
        self._reset_state()
        self._hook("setup")

    @classmethod
    def from_config(
        cls, pipeline: nn.Module, loss: Callable[..., Mapping[str, Tensor]], weights: Mapping[str, float],
        config: Mapping[str, Any] | None = None, **overrides: Any,
    ) -> PatchTrainer:
        """Build from a plain config; see :func:`~pandemonium.attack.training.config.trainer_kwargs`.

        >>> trainer = PatchTrainer.from_config(pipeline, loss, {"ce": 1.0}, {    # doctest: +SKIP
        ...     "batch_size": 16, "optimizer": {"_target_": "adam", "lr": 0.05},
        ...     "evaluation": {"num_eval": 64, "every": 25},
        ...     "callbacks": {"best_metric": "untargeted_success", "best_mode": "max", "mlflow": False}})
        """
        return cls(pipeline, loss, weights, **trainer_kwargs(config, **overrides))

    # ------------------------------------------------------------------------------ set-up
    def _check_loss_on_test_batch(self) -> list[str]:
        """Run one training batch (RNG untouched) and check the loss contract and the weights."""
        with isolated_rng(self.pipeline, self.patch), torch.no_grad():
            x = expand_patch(patch_value(self.patch), self.batch_size)
            y, kwargs = self.pipeline(x)
            terms = check_loss(self.loss, y, kwargs, batch_size=self.batch_size)
        unknown = sorted(set(self.weights) - set(terms))
        if unknown:
            raise TrainerSettingError(
                f"PatchTrainer: weights given for {unknown}, which the loss does not return; available "
                f"terms: {sorted(terms)}"
            )
        if not self.weights:
            raise TrainerSettingError(f"PatchTrainer: weights is empty; give a weight to some of {sorted(terms)}")
        return list(terms)

    def _check_replay(self) -> None:
        """The pipeline must replay a batch from ``get_last_sample_as_dict()`` bit for bit: checked
        before any step, so a non-replayable stage fails now naming itself (a ``StageError``), not at
        the first evaluation whose fixed conditions rely on replay. Random streams are untouched."""
        with torch.no_grad():
            check_replay(self.pipeline, expand_patch(patch_value(self.patch), min(2, self.batch_size)))

    def _reset_state(self) -> None:
        self.step = 0
        self.should_stop = False
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.run_id: str | None = None
        self.last_checkpoint: Path | None = None
        self.last_table: Path | None = None
        self.artifacts: list[tuple[Path, str]] = []
        self._hook_plain("reset")

    def _build(self, steps: int) -> None:
        """A fresh optimiser and schedule for each fit (a resumed fit then loads their state)."""
        params = [p for p in self.patch.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.optimizer_spec, params)
        self.scheduler = build_schedule(self.schedule_spec, self.optimizer, total_steps=steps)
        self.max_steps = steps

    # ------------------------------------------------------------------------------ lookups
    def callback(self, kind: type[Callback]) -> Any:
        """The first callback of type ``kind``, or ``None``."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    @property
    def checkpoint_path(self) -> Path:
        """Where the :class:`Checkpoint` callback writes (its default place when there is none)."""
        ckpt = self.callback(Checkpoint)
        return ckpt.path(self) if ckpt is not None else self.out_dir / "checkpoints" / "last.pt"

    @property
    def monitor(self) -> str:
        """The metric a ``plateau`` schedule watches: early stopping's, else the best patch's."""
        watcher = self.callback(EarlyStopping) or self.callback(BestPatch)
        return watcher.metric if watcher is not None else "total_patch"

    def hparams(self) -> dict[str, Any]:
        """The settings of this trainer as plain data (logged as MLflow params)."""
        spec = dict(self.optimizer_spec)
        return {
            "optimizer": spec.pop("_target_"), "optimizer_kwargs": spec, "schedule": self.schedule_spec,
            "batch_size": self.batch_size, "evaluation": self.settings.as_dict(),
            "grad_accumulation": self.grad_accumulation, "sharpness_aware": self.sharpness_aware,
            "seed": self.seed, "devices": self.sharding.shards if self.sharding is not None else 1,
            "weights": self.weights, "patch": type(self.patch).__name__,
            "callbacks": [type(c).__name__ for c in self.callbacks],
        }

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed fit needs, callbacks' state included."""
        return trainer_state(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        restore_state(self, state)

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Atomically write :meth:`state_dict` (see :mod:`~pandemonium.attack.checkpoint`)."""
        path = Path(path) if path is not None else self.checkpoint_path
        save_checkpoint(self.state_dict(), path)
        self.last_checkpoint = path
        self._hook("on_checkpoint_saved", path)
        return path

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, step: int | None = None, writer: Any = None, logging_to_mlflow: bool = False) -> EvalResult:
        """Run the fixed evaluation on the current patch (RNG streams untouched); with a TensorBoard
        ``writer`` the stages' ``log_vizualizations`` run on the first evaluation batch."""
        step = self.step if step is None else step
        tb = self.callback(TensorBoardLogger)
        with isolated_rng(self.pipeline, self.patch), torch.no_grad():
            return self.evaluation.run(
                self.patch, step=step, keep_images=(tb.images if tb is not None else 4) if writer is not None else 0,
                writer=writer, logging_to_mlflow=logging_to_mlflow,
            )

    def _evaluate_now(self) -> float:
        t0 = time.perf_counter()
        tb, ml = self.callback(TensorBoardLogger), self.callback(MLflowLogger)
        result = self.evaluate(self.step, writer=tb.writer if tb is not None else None,
                               logging_to_mlflow=ml is not None and ml.run_id is not None)
        self.evals.append({"step": self.step, **{k: float(v) for k, v in result.summary.items()}})
        if self.sharding is None or self.sharding.on_evaluation(self):  # several devices: rank 0 writes
            self.last_table = save_table(result.table, self.out_dir / "eval" / f"eval_step{self.step:06d}")
        if is_plateau(self.scheduler):
            self.scheduler.step(require_metric(result.summary, self.monitor, "plateau schedule"))
        self._hook("on_evaluation_end", self.step, result)
        return time.perf_counter() - t0

    # ------------------------------------------------------------------------------ fit
    def fit(self, steps: int, resume_from: str | Path | None = None, overwrite: bool = False) -> FitResult:
        """Train for ``steps`` optimiser steps in total (a resumed fit continues to the same total).

        Evaluates at step 0, every ``evaluation.every`` steps and at the end; the callbacks act on
        each evaluation (a ``Checkpoint`` writes one). A loss term that becomes NaN/inf raises
        :class:`NonFiniteLossError`; the last checkpoint stays on disk.

        Args:
            steps: total number of optimiser steps.
            resume_from: a checkpoint to continue from, or ``"auto"``: this trainer's checkpoint if
                there is one (a fresh fit otherwise) -- what a re-run of an interrupted step wants.
            overwrite: start afresh even though ``out_dir`` already holds a fit's checkpoint (by
                default that is an error, so finished results are never overwritten by accident).
        """
        if steps < 1:
            raise TrainerSettingError(f"PatchTrainer.fit: steps must be >= 1, got {steps}")
        if isinstance(resume_from, str) and resume_from == "auto":
            resume_from = self.checkpoint_path if self.checkpoint_path.is_file() else None
        if resume_from is None and not overwrite and self.checkpoint_path.is_file():
            raise FileExistsError(
                f"PatchTrainer.fit: {str(self.out_dir)!r} already holds a fit ({self.checkpoint_path.name} at "
                f"step {load_checkpoint(self.checkpoint_path)['step']}); pass resume_from='auto' to continue it, "
                "overwrite=True to start afresh, or another out_dir"
            )
        if self.sharding is not None and self.sharding.launches:
            result, state = self.sharding.launch(self.run_loop, self, steps, resume_from)
            self._build(steps)
            self.load_state_dict(state)  # this object ends where process 0 ended
            return result
        return self.run_loop(steps, resume_from)

    def run_loop(self, steps: int, resume_from: str | Path | None = None) -> FitResult:
        """The loop of :meth:`fit` in this process (one process of a multi-device fit)."""
        start = time.perf_counter()
        self._reset_state()
        self._build(steps)
        if self.sharding is not None:
            self.sharding.seed_streams(self)
        if resume_from is not None:
            # on CPU: RNG states must be CPU byte tensors; load_state_dict moves the rest to the patch
            self.load_state_dict(load_checkpoint(resume_from, map_location="cpu"))
            log.info("resumed from %s at step %d", resume_from, self.step)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        runner = StepRunner(self)
        eval_seconds = 0.0
        try:
            self._hook("on_fit_start")
            if resume_from is None:
                eval_seconds += self._evaluate_now()
            while self.step < steps and not self.should_stop:
                logs = runner.step(self.step + 1)  # 1-based, as in the logged metrics
                self.step += 1
                logs["step"] = self.step
                self.history.append(logs)
                self._hook("on_step_end", self.step, logs)
                if self.step % self.settings.every == 0 or self.step == steps:
                    eval_seconds += self._evaluate_now()
            result = fit_result(self, time.perf_counter() - start, eval_seconds)
            self._hook("on_fit_end", result)
        except BaseException as err:
            if isinstance(err, NonFiniteLossError):
                log.error("%s", err)
            self._hook("on_exception", err)
            raise
        finally:
            self._hook("teardown")
        return result

    def _hook(self, name: str, *args: Any) -> None:
        # getattr: a duck-typed object with only some of the hooks is a callback too
        for callback in self.callbacks:
            method = getattr(callback, name, None)
            if method is not None:
                method(self, *args)

    def _hook_plain(self, name: str) -> None:
        for callback in self.callbacks:
            method = getattr(callback, name, None)
            if method is not None:
                method()
