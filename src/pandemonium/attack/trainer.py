"""``PatchTrainer``: a pipeline + a loss + term weights -> a trained patch, with fixed evaluation,
MLflow/TensorBoard tracking, checkpoints and bit-exact resume.

>>> trainer = PatchTrainer(pipeline, loss, {"untargeted": 1.0, "tv": 0.1},   # doctest: +SKIP
...                        patch=(3, 16, 16), batch_size=16, optimizer="mifgsm",
...                        optimizer_kwargs={"lr": 2 / 255, "mu": 1.0}, eval_every=50,
...                        early_stopping={"metric": "untargeted_success", "mode": "max", "patience": 5},
...                        out_dir="results/fit")
>>> result = trainer.fit(500)                                                    # doctest: +SKIP
>>> result.best_patch.shape, result.best_metric                                   # doctest: +SKIP

Results folder (``out_dir``)::

    mlflow.db, mlartifacts/          default MLflow tracking (SQLite) and its artifacts
    tensorboard/<run>/               TensorBoard events
    checkpoints/last.pt              written atomically at every evaluation; fit(resume_from=...)
    eval/eval_step<k>.parquet        per-sample evaluation table (+ .params.json: param types)
    patch_last.{pt,png}, patch_best.{pt,png}, pipeline.yaml, plots/

Hooks: ``on_step(trainer, step, logs)`` (after every optimiser step) and ``on_eval(trainer, step,
eval_result)`` (after every evaluation and its checkpoint) as plain callables, or ``callbacks=[obj]``
whose methods carry Lightning's names: ``on_fit_start(trainer)``, ``on_train_batch_end(trainer, step,
logs)``, ``on_validation_end(trainer, step, eval_result)``, ``on_fit_end(trainer, result)`` and
``on_exception(trainer, error)`` (each optional).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pandemonium.attack.checkpoint import (
    get_rng_state,
    isolated_rng,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from pandemonium.attack.evaluation import EvalResult, FixedEvaluation, save_table
from pandemonium.attack.losses import weighted_total
from pandemonium.attack.optimizers import build_optimizer
from pandemonium.attack.schedules import build_schedule, is_plateau
from pandemonium.errors import PandemoniumError
from pandemonium.testing import check_loss

__all__ = ["FitResult", "NonFiniteLossError", "PatchDict", "PatchTrainer", "TensorPatch"]

log = logging.getLogger(__name__)


class NonFiniteLossError(PandemoniumError, RuntimeError):
    """A loss term (or the patch gradient) became NaN or infinite; the message names term and step."""

    exit_code = 1  # a failure during work, not bad input


class TensorPatch(nn.Module):
    """Raw-pixel patch in [0, 1] (fallback when ``patch`` is a tensor or a shape).

    ``forward()`` returns the ``(C, h, w)`` patch; ``project_()`` clamps it back into [0, 1].
    """

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.patch = nn.Parameter(init.detach().clone().float().clamp(0, 1))

    def forward(self) -> Tensor:
        return self.patch

    @torch.no_grad()
    def project_(self) -> None:
        self.patch.clamp_(0.0, 1.0)


class PatchDict(nn.ModuleDict):
    """Several named patches; ``forward()`` returns ``{name: (C, h, w)}``."""

    def forward(self) -> dict[str, Tensor]:
        return {k: m() for k, m in self.items()}


def _as_patch_module(patch: Any) -> nn.Module:
    if isinstance(patch, nn.Module):
        return patch
    if isinstance(patch, Mapping):
        return PatchDict({str(k): _as_patch_module(v) for k, v in patch.items()})
    if isinstance(patch, Tensor):
        if patch.ndim != 3:
            raise ValueError(f"PatchTrainer: a patch tensor must be (C, h, w), got shape {tuple(patch.shape)}")
        return TensorPatch(patch)
    if isinstance(patch, (tuple, list)) and len(patch) == 3 and all(isinstance(v, int) for v in patch):
        return TensorPatch(torch.full(tuple(patch), 0.5))
    raise ValueError(
        f"PatchTrainer: patch must be a patch module, a (C, h, w) tensor, a (C, h, w) shape or a dict of "
        f"those; got {type(patch).__name__}"
    )


def _derived_seed(purpose: str, seed: int) -> int:
    # a hash, not seed + k: neighbouring run seeds must not share evaluation conditions
    digest = hashlib.sha256(f"pandemonium-trainer:{purpose}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _patch_value(module: nn.Module) -> Any:
    return module()


def _detached(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _detached(v) for k, v in value.items()}
    return value.detach().cpu().clone()


def _expand(value: Any, batch: int) -> Any:
    if isinstance(value, Mapping):
        return {k: _expand(v, batch) for k, v in value.items()}
    if value.ndim == 3:
        value = value.unsqueeze(0)
    return value.expand(batch, *value.shape[1:])


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


class PatchTrainer:
    """Optimise a patch through a pipeline against a loss (see the module docstring).

    Args:
        pipeline: a :class:`~pandemonium.attack.pipeline.Pipeline` (or any stage with the contract).
        loss: ``loss(outputs, **kwargs) -> {term: Tensor(B)}``.
        weights: ``{term: weight}``; weighted terms are optimised, all terms are logged.
        patch: a patch module (``forward() -> (C, h, w)``, optional ``project_()``), a ``(C, h, w)``
            tensor, a ``(C, h, w)`` shape (grey start) or a dict of those (several patches).
        batch_size: training batch size; ``eval_batch_size`` (default: batch_size) and ``num_eval``
            (number of fixed evaluation samples) configure :class:`FixedEvaluation`.
        optimizer, optimizer_kwargs: see :func:`~pandemonium.attack.optimizers.build_optimizer`.
        schedule, schedule_kwargs: see :func:`~pandemonium.attack.schedules.build_schedule`.
        grad_accumulation: micro-batches per optimiser step.
        sharpness_aware: SAM radius ``rho`` (None: off). The ascent step is replayed on exactly the
            sampled conditions of the step (``params=`` replay).
        early_stopping: ``{"metric": name, "patience": evals, "mode": "min"|"max", "min_delta": 0}``.
        best_metric: metric that picks the best patch (default: the early-stopping metric, else
            ``total_patch``, mode min); ``best_mode`` its direction.
        eval_every: steps between evaluations (and checkpoints).
        seed: the run seed. The pipeline's stages are re-seeded from it at construction
            (``pipeline.set_seed(seed)``), so a fit depends on the seed alone and not on how the
            pipeline object was used before; the evaluation conditions use a seed derived from it.
            ``None`` keeps the pipeline's current streams.
        out_dir: results folder (checkpoints, tables, patches, ``mlflow.db``, ``tensorboard/``).
        mlflow: ``True`` (SQLite in ``out_dir``), a tracking URI, or ``False``/``None`` (off).
        tensorboard: write TensorBoard events to ``<out_dir>/tensorboard/<run_name>``.
        target_class: target class for the targeted success rate (classification).
        on_step, on_eval: callbacks ``on_step(trainer, step, logs)``, ``on_eval(trainer, step, result)``.
        callbacks: objects with any of the Lightning-named hooks listed in the module docstring.
        progress: show a tqdm progress bar with the current loss terms.
    """

    def __init__(
        self,
        pipeline: nn.Module,
        loss: Callable[..., Mapping[str, Tensor]],
        weights: Mapping[str, float],
        patch: Any = (3, 32, 32),
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_eval: int = 32,
        optimizer: str = "adam",
        optimizer_kwargs: Mapping[str, Any] | None = None,
        schedule: str = "none",
        schedule_kwargs: Mapping[str, Any] | None = None,
        grad_accumulation: int = 1,
        sharpness_aware: float | None = None,
        early_stopping: Mapping[str, Any] | None = None,
        best_metric: str | None = None,
        best_mode: str = "min",
        eval_every: int = 50,
        seed: int | None = 0,
        out_dir: str | Path | None = None,
        mlflow: bool | str | None = True,
        mlflow_experiment: str | None = None,
        tensorboard: bool = True,
        run_name: str = "patch-fit",
        device: str | torch.device = "cpu",
        target_class: int | None = None,
        on_step: Callable[[PatchTrainer, int, dict[str, float]], None] | None = None,
        on_eval: Callable[[PatchTrainer, int, EvalResult], None] | None = None,
        callbacks: Sequence[Any] = (),
        progress: bool = True,
        log_images: int = 4,
    ) -> None:
        if batch_size < 1 or grad_accumulation < 1 or eval_every < 1:
            raise ValueError(
                f"PatchTrainer: batch_size ({batch_size}), grad_accumulation ({grad_accumulation}) and "
                f"eval_every ({eval_every}) must be >= 1"
            )
        if sharpness_aware is not None and sharpness_aware <= 0:
            raise ValueError(f"PatchTrainer: sharpness_aware (rho) must be > 0, got {sharpness_aware}")
        self.device = torch.device(device)
        self.pipeline = pipeline.to(self.device)
        self.loss = loss
        self.weights = {str(k): float(v) for k, v in dict(weights).items()}
        self.patch = _as_patch_module(patch).to(self.device)
        if not any(p.requires_grad for p in self.patch.parameters()):
            raise ValueError("PatchTrainer: the patch module has no trainable parameters")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_eval = int(num_eval)
        self.optimizer_name = optimizer
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.schedule_name = schedule
        self.schedule_kwargs = dict(schedule_kwargs or {})
        self.grad_accumulation = int(grad_accumulation)
        self.sharpness_aware = sharpness_aware
        self.early_stopping = self._check_early_stopping(early_stopping)
        if best_metric is None and self.early_stopping:
            best_metric, best_mode = self.early_stopping["metric"], self.early_stopping["mode"]
        self.best_metric_name = best_metric or "total_patch"
        if best_mode not in ("min", "max"):
            raise ValueError(f"PatchTrainer: best_mode must be 'min' or 'max', got {best_mode!r}")
        self.best_mode = best_mode
        self.eval_every = int(eval_every)
        if seed is not None and hasattr(self.pipeline, "set_seed"):
            if hasattr(self.pipeline, "stages"):
                self.pipeline.set_seed(int(seed))
            else:  # a single stage: position 0
                self.pipeline.set_seed(int(seed), 0)
        self.seed = int(seed if seed is not None else getattr(self.pipeline, "seed", 0))
        self.eval_seed = _derived_seed("evaluation", self.seed)
        self.run_name = run_name
        self.out_dir = Path(out_dir) if out_dir is not None else (
            Path("results") / "fits" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        )
        self.tensorboard = bool(tensorboard)
        self.on_step = on_step
        self.on_eval = on_eval
        self.callbacks = list(callbacks)
        self.progress = progress
        self.log_images = int(log_images)
        self.mlflow_experiment = mlflow_experiment
        self._mlflow_uri_is_default = mlflow is True
        self.mlflow_uri = self._resolve_mlflow(mlflow)
        self.term_names = self._check_loss_on_test_batch()
        self.evaluation = FixedEvaluation(
            self.pipeline, self.loss, self.weights, num_eval=self.num_eval,
            batch_size=self.eval_batch_size, seed=self.eval_seed, target_class=target_class,
        )
        # rebuilt by fit() (cosine needs the number of steps); built here so a bad optimiser or
        # schedule name or setting fails at construction, not after the first evaluation
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._built_for_steps: int | None = None
        self._build(max(1, self.eval_every))
        self._reset_state()

    # ------------------------------------------------------------------------------ set-up checks
    @staticmethod
    def _check_early_stopping(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not cfg:
            return None
        known = {"metric", "patience", "mode", "min_delta"}
        unknown = set(cfg) - known
        if unknown or "metric" not in cfg:
            raise ValueError(
                f"PatchTrainer: early_stopping needs 'metric' and accepts {sorted(known)}; got {sorted(cfg)}"
            )
        out = {"patience": 5, "mode": "min", "min_delta": 0.0, **dict(cfg)}
        if out["mode"] not in ("min", "max"):
            raise ValueError(f"PatchTrainer: early_stopping mode must be 'min' or 'max', got {out['mode']!r}")
        return out

    def _resolve_mlflow(self, mlflow: bool | str | None) -> str | None:
        if mlflow is None or mlflow is False:
            return None
        from pandemonium.tracking.mlflow_utils import check_tracking_uri, resolve_tracking_uri

        uri = resolve_tracking_uri(None if mlflow is True else str(mlflow), self.out_dir)
        loaded = sys.modules.get("mlflow")  # only look for a parent run if MLflow is in use already
        if mlflow is True and loaded is not None and loaded.active_run() is not None:
            uri = loaded.get_tracking_uri()  # inside a mode's run: the child goes where the parent is
        return check_tracking_uri(uri)

    def _check_loss_on_test_batch(self) -> list[str]:
        """Run one training batch (RNG untouched) and check the loss contract and the weights."""
        with isolated_rng(self.pipeline, self.patch), torch.no_grad():
            x = _expand(_patch_value(self.patch), self.batch_size)
            y, kwargs = self.pipeline(x)
            terms = check_loss(self.loss, y, kwargs, batch_size=self.batch_size)
        unknown = sorted(set(self.weights) - set(terms))
        if unknown:
            raise ValueError(
                f"PatchTrainer: weights given for {unknown}, which the loss does not return; available "
                f"terms: {sorted(terms)}"
            )
        if not self.weights:
            raise ValueError(f"PatchTrainer: weights is empty; give a weight to some of {sorted(terms)}")
        return list(terms)

    def _reset_state(self) -> None:
        self.step = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.bad_evals = 0
        self._es_best: float | None = None
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.run_id: str | None = None
        self.last_checkpoint: Path | None = None
        self.last_table: Path | None = None
        self.stopped_early = False

    def _build(self, steps: int) -> None:
        """A fresh optimiser and schedule for each fit (a resumed fit then loads their state)."""
        self.optimizer = build_optimizer(
            self.optimizer_name, [p for p in self.patch.parameters() if p.requires_grad], **self.optimizer_kwargs
        )
        self.scheduler = build_schedule(self.schedule_name, self.optimizer, total_steps=steps, **self.schedule_kwargs)
        self._built_for_steps = steps

    # ------------------------------------------------------------------------------ paths
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoints" / "last.pt"

    # ------------------------------------------------------------------------------ training step
    def _terms_or_raise(self, terms: Mapping[str, Tensor], step: int) -> Tensor:
        """Per-term batch means; raises naming the first non-finite term (one device sync)."""
        finite = torch.stack([torch.isfinite(t.detach()).all() for t in terms.values()])
        if not bool(finite.all()):
            bad = [k for k, ok in zip(terms, finite.tolist()) if not ok]
            kind = "NaN" if bool(torch.isnan(terms[bad[0]].detach()).any()) else "infinite"
            raise NonFiniteLossError(
                f"loss term {bad[0]!r} became {kind} at step {step} (non-finite terms: {bad}); the fit stopped. "
                f"Last good checkpoint: {self.last_checkpoint}"
            )
        return torch.stack([t.detach().float().mean() for t in terms.values()])

    def _forward_loss(self, params: Mapping[str, Any] | None = None) -> tuple[Tensor, Mapping[str, Tensor], Any]:
        x = _expand(_patch_value(self.patch), self.batch_size)
        y, kwargs = self.pipeline(x, params=params)
        terms = self.loss(y, **kwargs)
        total = weighted_total(terms, self.weights) / self.grad_accumulation
        return total, terms, None

    def _train_step(self, step: int) -> dict[str, float]:
        """One optimiser step; ``step`` (1-based, as logged) only names the step in errors."""
        opt = self.optimizer
        assert opt is not None
        if hasattr(opt, "train"):  # NI-FGSM: move to the Nesterov look-ahead point
            opt.train()
        opt.zero_grad(set_to_none=True)
        samples: list[Mapping[str, Any]] = []
        means = None
        try:
            for _ in range(self.grad_accumulation):
                total, terms, _ = self._forward_loss()
                term_means = self._terms_or_raise(terms, step)
                means = term_means if means is None else means + term_means
                total.backward()
                if self.sharpness_aware:
                    samples.append(self.pipeline.get_last_sample_as_dict())
            if self.sharpness_aware:
                self._sharpness_aware_grad(samples, step)
            self._check_grads(step)
        except BaseException:
            if hasattr(opt, "eval"):  # leave the patch at its iterate, not the look-ahead point
                opt.eval()
            raise
        opt.step()
        if hasattr(opt, "eval"):
            opt.eval()
        self._project()
        if not is_plateau(self.scheduler):
            self.scheduler.step()
        values = (means / self.grad_accumulation).tolist()
        logs = dict(zip(terms, values))
        logs["total"] = float(sum(self.weights[k] * logs[k] for k in self.weights))
        logs["lr"] = float(opt.param_groups[0]["lr"])
        return logs

    def _sharpness_aware_grad(self, samples: list[Mapping[str, Any]], step: int) -> None:
        """SAM: move the patch by rho along its gradient, take the gradient there on the *same*
        sampled conditions (params replay), move back exactly, keep that gradient for the step."""
        params = [p for p in self.patch.parameters() if p.grad is not None]
        if not params:
            return
        with torch.no_grad():
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
            scale = float(self.sharpness_aware) / (norm + 1e-12)
            saved = [p.detach().clone() for p in params]
            for p in params:
                p.add_(p.grad * scale)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            for sample in samples:
                total, terms, _ = self._forward_loss(params=sample)
                self._terms_or_raise(terms, step)
                total.backward()
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)  # copy, not subtract: restores the exact bits

    def _check_grads(self, step: int) -> None:
        for name, p in self.patch.named_parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise NonFiniteLossError(
                    f"the gradient of patch parameter {name!r} became non-finite at step {step}; the fit "
                    f"stopped. Last good checkpoint: {self.last_checkpoint}"
                )

    @torch.no_grad()
    def _project(self) -> None:
        modules = list(self.patch.values()) if isinstance(self.patch, nn.ModuleDict) else [self.patch]
        for module in modules:
            if hasattr(module, "project_"):
                module.project_()
            else:
                for p in module.parameters():
                    p.clamp_(0.0, 1.0)

    # ------------------------------------------------------------------------------ evaluation
    def _is_better(self, value: float, reference: float | None, mode: str, min_delta: float = 0.0) -> bool:
        if value is None or math.isnan(value):
            return False
        if reference is None:
            return True
        return value < reference - min_delta if mode == "min" else value > reference + min_delta

    def evaluate(self, step: int | None = None, writer: Any = None, logging_to_mlflow: bool = False) -> EvalResult:
        """Run the fixed evaluation on the current patch (RNG streams untouched); with a TensorBoard
        ``writer`` the stages' ``log_vizualizations`` run on the first evaluation batch."""
        step = self.step if step is None else step
        with isolated_rng(self.pipeline, self.patch), torch.no_grad():
            return self.evaluation.run(
                self.patch, step=step, keep_images=self.log_images if writer is not None else 0, writer=writer,
                logging_to_mlflow=logging_to_mlflow,
            )

    def _after_eval(self, result: EvalResult, step: int) -> bool:
        """Best patch and early stopping; True when training should stop."""
        summary = result.summary
        for name in [self.best_metric_name] + ([self.early_stopping["metric"]] if self.early_stopping else []):
            if name not in summary:
                raise KeyError(
                    f"PatchTrainer: metric {name!r} is not produced by the evaluation; available metrics: "
                    f"{sorted(k for k in summary if not k.endswith(('_se', '_ci_low', '_ci_high', '_n')))}"
                )
        value = summary[self.best_metric_name]
        if self._is_better(value, self.best_value, self.best_mode):
            self.best_value, self.best_step = float(value), step
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.patch.state_dict().items()})
        if not self.early_stopping:
            return False
        es = self.early_stopping
        metric = summary[es["metric"]]
        if self._is_better(metric, self._es_best, es["mode"], es["min_delta"]):
            self._es_best = float(metric)
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return self.bad_evals > es["patience"]

    # ------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "patch": {k: v.detach().cpu().clone() for k, v in self.patch.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_value": self.best_value,
            "best_step": self.best_step,
            "best_state": self.best_state,
            "early_stopping": {"bad_evals": self.bad_evals, "best": self._es_best},
            "history": self.history,
            "evals": self.evals,
            "rng": get_rng_state(self.pipeline, self.patch),
            "run_id": self.run_id,
            "steps_total": self._built_for_steps,
            "settings": {"optimizer": self.optimizer_name, "schedule": self.schedule_name, "seed": self.seed},
        }

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Atomically write the full training state (see :mod:`~pandemonium.attack.checkpoint`)."""
        path = Path(path) if path is not None else self.checkpoint_path
        save_checkpoint(self._state(), path)
        self.last_checkpoint = path
        return path

    def _restore(self, state: Mapping[str, Any]) -> None:
        self.patch.load_state_dict(state["patch"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.best_value, self.best_step, self.best_state = state["best_value"], state["best_step"], state["best_state"]
        self.bad_evals = int(state["early_stopping"]["bad_evals"])
        self._es_best = state["early_stopping"]["best"]
        self.history, self.evals = list(state["history"]), list(state["evals"])
        self.run_id = state.get("run_id")
        set_rng_state(state["rng"], self.pipeline, self.patch)

    # ------------------------------------------------------------------------------ fit
    def fit(self, steps: int, resume_from: str | Path | None = None, overwrite: bool = False) -> FitResult:
        """Train for ``steps`` optimiser steps in total (a resumed fit continues to the same total).

        Evaluates (and checkpoints) at step 0, every ``eval_every`` steps and at the end. A loss term
        that becomes NaN/inf raises :class:`NonFiniteLossError`; the last checkpoint stays on disk.

        Args:
            steps: total number of optimiser steps.
            resume_from: a checkpoint to continue from, or ``"auto"``: this ``out_dir``'s checkpoint
                if there is one (a fresh fit otherwise) -- what a re-run of an interrupted step wants.
            overwrite: start afresh even though ``out_dir`` already holds a fit's checkpoint (by
                default that is an error, so finished results are never overwritten by accident).
        """
        if steps < 1:
            raise ValueError(f"PatchTrainer.fit: steps must be >= 1, got {steps}")
        if isinstance(resume_from, str) and resume_from == "auto":
            resume_from = self.checkpoint_path if self.checkpoint_path.is_file() else None
        if resume_from is None and not overwrite and self.checkpoint_path.is_file():
            raise FileExistsError(
                f"PatchTrainer.fit: {str(self.out_dir)!r} already holds a fit ({self.checkpoint_path.name} at "
                f"step {load_checkpoint(self.checkpoint_path)['step']}); pass resume_from='auto' to continue it, "
                "overwrite=True to start afresh, or another out_dir"
            )
        start = time.perf_counter()
        self._reset_state()
        self._build(steps)
        if resume_from is not None:
            # on CPU: RNG states must be CPU byte tensors; load_state_dict moves the rest to the patch
            state = load_checkpoint(resume_from, map_location="cpu")
            self._restore(state)
            log.info("resumed from %s at step %d", resume_from, self.step)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        eval_seconds = 0.0
        tracker = _FitTracker(self)
        bar = None
        with contextlib.ExitStack() as stack:
            stack.enter_context(tracker)
            self.run_id = tracker.run_id
            bar = self._progress_bar(steps)
            if bar is not None:
                stack.callback(bar.close)
            try:
                self._hook("on_fit_start")
                if resume_from is None:
                    eval_seconds += self._evaluate_and_checkpoint(tracker)
                while self.step < steps and not self.stopped_early:
                    logs = self._train_step(self.step + 1)  # 1-based, as in the logged metrics
                    self.step += 1
                    logs["step"] = self.step
                    self.history.append(logs)
                    tracker.log_step(logs, self.step)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "step"}, refresh=False)
                    if self.on_step is not None:
                        self.on_step(self, self.step, logs)
                    self._hook("on_train_batch_end", self.step, logs)
                    if self.step % self.eval_every == 0 or self.step == steps:
                        eval_seconds += self._evaluate_and_checkpoint(tracker)
            except NonFiniteLossError as err:
                log.error("%s", err)
                tracker.mark_failed(str(err))
                self._hook("on_exception", err)
                raise
            except Exception as err:
                self._hook("on_exception", err)
                raise
            tracker.finish(self)
        patch = _detached(_patch_value(self.patch))
        best_patch = self._best_patch_value()
        result = FitResult(
            patch=patch, best_patch=best_patch, best_step=self.best_step, best_metric=self.best_value,
            metric=self.best_metric_name, steps_run=self.step, stopped_early=self.stopped_early,
            history=self.history, evals=self.evals, checkpoint_path=self.last_checkpoint,
            eval_table_path=self.last_table, out_dir=self.out_dir, run_id=self.run_id,
            seconds=time.perf_counter() - start, eval_seconds=eval_seconds,
        )
        self._hook("on_fit_end", result)
        return result

    def _best_patch_value(self) -> Any:
        if self.best_state is None:
            return _detached(_patch_value(self.patch))
        module = copy.deepcopy(self.patch).cpu()
        module.load_state_dict(self.best_state)
        with torch.no_grad():
            return _detached(_patch_value(module))

    def _evaluate_and_checkpoint(self, tracker: Any) -> float:
        t0 = time.perf_counter()
        result = self.evaluate(self.step, writer=tracker.writer, logging_to_mlflow=tracker.run_id is not None)
        stop = self._after_eval(result, self.step)
        if stop:
            self.stopped_early = True
            log.info("early stopping at step %d: %s did not improve for %d evaluations",
                     self.step, self.early_stopping["metric"], self.bad_evals)
        if is_plateau(self.scheduler):
            monitored = (self.early_stopping or {}).get("metric", self.best_metric_name)
            self.scheduler.step(result.summary[monitored])
        record = {"step": self.step, **{k: float(v) for k, v in result.summary.items()}}
        self.evals.append(record)
        self.last_table = save_table(result.table, self.out_dir / "eval" / f"eval_step{self.step:06d}")
        tracker.log_eval(result, self.step, self)
        self.save_checkpoint()
        if self.on_eval is not None:
            self.on_eval(self, self.step, result)
        self._hook("on_validation_end", self.step, result)
        return time.perf_counter() - t0

    def _hook(self, name: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, name, None)
            if method is not None:
                method(self, *args)

    def _progress_bar(self, steps: int) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=steps, initial=self.step, desc=self.run_name, dynamic_ncols=True, mininterval=0.5,
                    leave=False)


def patch_to_image(value: Any) -> np.ndarray:
    """(C, h, w) tensor in [0, 1] -> (h, w, C) uint8 array (grey patches become RGB)."""
    t = value.detach().cpu().float().clamp(0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, *t.shape[1:])
    return (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _artifact_location(uri: str) -> Path | None:
    """Artifacts of a SQLite-tracked run go to ``mlartifacts/`` beside the database file."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
    return None


class _FitTracker:
    """MLflow + TensorBoard logging of one fit (a context manager used by :meth:`PatchTrainer.fit`).

    One MLflow run per fit (a child run when a run is already active; the same run again when a fit
    is resumed from a checkpoint that recorded its id). Per-step metrics are buffered and written in
    batches at each evaluation, so logging stays off the training loop's critical path.
    """

    def __init__(self, trainer: PatchTrainer) -> None:
        self.trainer = trainer
        self.writer: Any = None
        self.run_id: str | None = None
        self._stack = contextlib.ExitStack()
        self._buffer: Any = None
        self._failed = False

    # -------------------------------------------------------------------- context
    def __enter__(self) -> _FitTracker:
        t = self.trainer
        try:
            if t.mlflow_uri is not None:
                self._start_mlflow(t)
            if t.tensorboard:
                from pandemonium.tracking.tensorboard_utils import make_writer

                name = t.run_name + (f"-{self.run_id[:8]}" if self.run_id else "")
                self.writer = make_writer(t.out_dir, name, purge_step=t.step if t.step else None)
                self._stack.callback(self.writer.close)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> bool:
        try:
            if self._buffer is not None:
                self._buffer.flush()
        except Exception as err:  # never let a logging failure hide the fit's own error or result
            log.warning("flushing MLflow metrics failed: %s", err)
        return bool(self._stack.__exit__(*exc))

    def _start_mlflow(self, t: PatchTrainer) -> None:
        import mlflow

        from pandemonium.tracking.mlflow_utils import MetricBuffer, start_run, use_tracking_uri

        uri = t.mlflow_uri
        if mlflow.active_run() is not None and t._mlflow_uri_is_default:
            # inside a mode's run: the child run goes where the parent is
            uri = mlflow.get_tracking_uri()
        self._stack.enter_context(use_tracking_uri(uri))
        resume_id = t.run_id if t.step else None
        if resume_id is not None:
            try:
                mlflow.MlflowClient().get_run(resume_id)
            except Exception:  # the run lives in another store: start a new one
                log.warning("MLflow run %s of the checkpoint not found in %s; starting a new run", resume_id, uri)
                resume_id = None
        description = t.pipeline.get_description() if hasattr(t.pipeline, "get_description") else ""
        run = self._stack.enter_context(
            start_run(name=t.run_name, run_id=resume_id, experiment=t.mlflow_experiment,
                      artifact_location=_artifact_location(uri),
                      tags={"pandemonium.kind": "patch_fit"},
                      description=description if resume_id is None else None)
        )
        self.run_id = run.info.run_id
        self._buffer = MetricBuffer(self.run_id)
        if resume_id is None:
            self._log_setup(t)

    def _log_setup(self, t: PatchTrainer) -> None:
        import mlflow
        import yaml

        from pandemonium.tracking.mlflow_utils import log_flat_params

        settings = {
            "optimizer": t.optimizer_name, "optimizer_kwargs": t.optimizer_kwargs, "schedule": t.schedule_name,
            "schedule_kwargs": t.schedule_kwargs, "batch_size": t.batch_size, "eval_batch_size": t.eval_batch_size,
            "num_eval": t.num_eval, "grad_accumulation": t.grad_accumulation, "sharpness_aware": t.sharpness_aware,
            "early_stopping": t.early_stopping, "eval_every": t.eval_every, "seed": t.seed,
            "weights": t.weights, "best_metric": t.best_metric_name, "patch": type(t.patch).__name__,
        }
        log_flat_params(settings, prefix="trainer", artifact_file="trainer_params_not_logged.yaml")
        if hasattr(t.pipeline, "to_config"):
            cfg = t.pipeline.to_config()
            log_flat_params(cfg, prefix="pipeline", artifact_file="pipeline_params_not_logged.yaml")
            path = t.out_dir / "pipeline.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            mlflow.log_artifact(str(path))

    # -------------------------------------------------------------------- logging
    def log_step(self, logs: Mapping[str, float], step: int) -> None:
        metrics = {f"train/{k}": v for k, v in logs.items() if k != "step"}
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, global_step=step)
        if self._buffer is not None:
            self._buffer.add(metrics, step)

    def log_eval(self, result: EvalResult, step: int, t: PatchTrainer) -> None:
        summary = {f"eval/{k}": v for k, v in result.summary.items() if not math.isnan(v)}
        if self.writer is not None:
            from pandemonium.tracking.tensorboard_utils import (
                log_before_after,
                log_histograms,
                log_patch,
                log_scalars,
            )

            log_scalars(self.writer, {k: v for k, v in summary.items()
                                      if not k.endswith(("_se", "_ci_low", "_ci_high", "_n"))}, step)
            cols = {c: result.table[c].to_numpy() for c in FixedEvaluation.value_columns(result.table)}
            log_histograms(self.writer, cols, step)
            with torch.no_grad():
                log_patch(self.writer, "patch", _patch_value(t.patch), step)
            log_before_after(self.writer, result.images, step)
            self.writer.flush()
        if self._buffer is not None:
            self._buffer.add(summary, step)
            self._buffer.flush()

    def mark_failed(self, message: str) -> None:
        self._failed = True
        if self.run_id is not None:
            import mlflow

            if self._buffer is not None:
                self._buffer.flush()
            mlflow.set_tag("pandemonium.failure", message[:5000])

    def finish(self, t: PatchTrainer) -> None:
        """Patch PNGs (last and best), the last eval table and plots: files, then MLflow artifacts."""
        from pandemonium.report.plots import plot_eval_history, plot_history, save_patch_png

        files: list[Path] = []
        with torch.no_grad():
            last, best = _detached(_patch_value(t.patch)), t._best_patch_value()
        for name, value in (("patch_last", last), ("patch_best", best)):
            torch.save(value, t.out_dir / f"{name}.pt")
            files.append(t.out_dir / f"{name}.pt")
            if isinstance(value, Mapping):
                files += [save_patch_png(v, t.out_dir / f"{name}_{k}.png") for k, v in value.items()]
            else:
                files.append(save_patch_png(value, t.out_dir / f"{name}.png"))
        if t.history:
            files.append(plot_history(t.history, t.out_dir / "plots" / "loss.png"))
        if t.evals:
            files.append(plot_eval_history(t.evals, t.best_metric_name, t.out_dir / "plots" / "eval_metric.png"))
        if self.run_id is not None:
            import mlflow

            if self._buffer is not None:
                self._buffer.flush()
            for f in files:
                mlflow.log_artifact(str(f), artifact_path="plots" if f.parent.name == "plots" else "patch")
            if t.last_table is not None:
                mlflow.log_artifact(str(t.last_table), artifact_path="eval")
                spec = t.last_table.with_suffix(".params.json")
                if spec.exists():
                    mlflow.log_artifact(str(spec), artifact_path="eval")
            if t.best_value is not None:
                mlflow.log_metric(f"best/{t.best_metric_name}", t.best_value, step=t.best_step or 0)
