"""Callbacks of :class:`~pandemonium.attack.training.trainer.PatchTrainer` (Lightning's pattern).

A callback is an object in the trainer's ``callbacks`` list. The trainer calls its hooks in list
order (a :class:`~pandemonium.attack.training.checkpointing.Checkpoint` always last, so it saves the
state the others just updated). Every hook is optional:

==========================================  =====================================================
``setup(trainer)``                          end of the trainer's construction (check settings early)
``on_fit_start(trainer)``                   after a resume was restored, before the step-0 evaluation
``on_step_end(trainer, step, logs)``        after each optimiser step (``logs``: term means, lr)
``on_evaluation_end(trainer, step, result)``  after each fixed evaluation (:class:`EvalResult`)
``on_checkpoint_saved(trainer, path)``      after a checkpoint file was written
``on_fit_end(trainer, result)``             the fit finished (:class:`FitResult`)
``on_exception(trainer, error)``            the fit raised
``teardown(trainer)``                       always, last (close files, end runs)
==========================================  =====================================================

A stateful callback returns its state from ``state_dict()`` and takes it back in
``load_state_dict(state)``; the checkpoint stores it under the callback's ``state_key``, so a resumed
fit continues every counter where it stopped. ``reset()`` forgets an earlier fit's state.

>>> stopper = EarlyStopping("untargeted_success", mode="max", patience=3)
>>> stopper.state_dict()
{'best': None, 'bad_evals': 0, 'stopped_step': None}
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from pandemonium.attack.training.patch_module import detached, patch_value
from pandemonium.errors import ConfigError

if TYPE_CHECKING:  # the trainer imports this module, not the other way round
    from pandemonium.attack.evaluation import EvalResult
    from pandemonium.attack.training.trainer import FitResult, PatchTrainer

__all__ = [
    "BestPatch",
    "Callback",
    "CallbackSettingError",
    "EarlyStopping",
    "LambdaCallback",
    "MetricNotFoundError",
    "ProgressBar",
    "is_better",
    "require_metric",
]

log = logging.getLogger(__name__)

_STATS_SUFFIXES = ("_se", "_ci_low", "_ci_high", "_n")


class CallbackSettingError(ConfigError, ValueError):
    """A callback got a setting it cannot use (e.g. ``mode='up'``); the message names callback and value."""


class MetricNotFoundError(ConfigError, KeyError):
    """A callback watches a metric the evaluation does not produce; the message lists what it does."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def require_metric(summary: Mapping[str, float], name: str, who: str) -> float:
    """``summary[name]``, or an error listing the evaluation's metrics."""
    if name not in summary:
        available = sorted(k for k in summary if not k.endswith(_STATS_SUFFIXES))
        raise MetricNotFoundError(
            f"{who}: metric {name!r} is not produced by the evaluation; available metrics: {available}"
        )
    return float(summary[name])


def is_better(value: float | None, reference: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether ``value`` improves on ``reference`` (``None``: nothing yet) in direction ``mode``."""
    if value is None or math.isnan(value):
        return False
    if reference is None:
        return True
    return value < reference - min_delta if mode == "min" else value > reference + min_delta


def _check_mode(who: str, mode: str) -> str:
    if mode not in ("min", "max"):
        raise CallbackSettingError(f"{who}: mode must be 'min' or 'max', got {mode!r}")
    return mode


class Callback:
    """Base class: every hook does nothing, the state is empty (see the module docstring)."""

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint (the trainer makes duplicates unique)."""
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned."""

    def reset(self) -> None:
        """Forget the state of an earlier fit (called at the start of every fit, before a resume)."""

    def setup(self, trainer: PatchTrainer) -> None: ...

    def on_fit_start(self, trainer: PatchTrainer) -> None: ...

    def on_step_end(self, trainer: PatchTrainer, step: int, logs: dict[str, float]) -> None: ...

    def on_evaluation_end(self, trainer: PatchTrainer, step: int, result: EvalResult) -> None: ...

    def on_checkpoint_saved(self, trainer: PatchTrainer, path: Any) -> None: ...

    def on_fit_end(self, trainer: PatchTrainer, result: FitResult) -> None: ...

    def on_exception(self, trainer: PatchTrainer, error: BaseException) -> None: ...

    def teardown(self, trainer: PatchTrainer) -> None: ...


class LambdaCallback(Callback):
    """Plain functions as hooks: ``LambdaCallback(on_step_end=lambda trainer, step, logs: ...)``."""

    _HOOKS = ("setup", "on_fit_start", "on_step_end", "on_evaluation_end", "on_checkpoint_saved", "on_fit_end",
              "on_exception", "teardown")

    def __init__(self, **hooks: Callable[..., None]) -> None:
        unknown = sorted(set(hooks) - set(self._HOOKS))
        if unknown:
            raise CallbackSettingError(f"LambdaCallback: unknown hooks {unknown}; known hooks: {list(self._HOOKS)}")
        for name, fn in hooks.items():
            setattr(self, name, fn)


class BestPatch(Callback):
    """Keeps the patch with the best value of an evaluation metric (the patch the fit reports).

    Args:
        metric: an evaluation summary key, e.g. ``total_patch`` or ``untargeted_success``.
        mode: ``"min"`` or ``"max"``: the direction that is better.
    """

    def __init__(self, metric: str = "total_patch", mode: str = "min") -> None:
        self.metric = str(metric)
        self.mode = _check_mode("BestPatch", mode)
        self.reset()

    def reset(self) -> None:
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best_value": self.best_value, "best_step": self.best_step, "best_state": self.best_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_value, self.best_step, self.best_state = state["best_value"], state["best_step"], state["best_state"]

    def on_evaluation_end(self, trainer: PatchTrainer, step: int, result: EvalResult) -> None:
        value = require_metric(result.summary, self.metric, "BestPatch")
        if is_better(value, self.best_value, self.mode):
            self.best_value, self.best_step = value, step
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in trainer.patch.state_dict().items()})

    def best_patch(self, patch: torch.nn.Module) -> Any:
        """The best patch value (a detached CPU copy); ``patch``'s current value before any evaluation."""
        if self.best_state is None:
            return detached(patch_value(patch))
        module = copy.deepcopy(patch).cpu()
        module.load_state_dict(self.best_state)
        with torch.no_grad():
            return detached(patch_value(module))


class EarlyStopping(Callback):
    """Stops the fit when ``metric`` has not improved for more than ``patience`` evaluations.

    Args:
        metric: the evaluation summary key to watch.
        mode: ``"min"`` or ``"max"``.
        patience: evaluations without improvement that are tolerated.
        min_delta: the smallest change that counts as an improvement.
    """

    def __init__(self, metric: str, mode: str = "min", patience: int = 5, min_delta: float = 0.0) -> None:
        if int(patience) < 0:
            raise CallbackSettingError(f"EarlyStopping: patience must be >= 0, got {patience}")
        self.metric = str(metric)
        self.mode = _check_mode("EarlyStopping", mode)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.reset()

    def reset(self) -> None:
        self.best: float | None = None
        self.bad_evals = 0
        self.stopped_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals, "stopped_step": self.stopped_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_evals, self.stopped_step = state["best"], int(state["bad_evals"]), state["stopped_step"]

    def on_evaluation_end(self, trainer: PatchTrainer, step: int, result: EvalResult) -> None:
        value = require_metric(result.summary, self.metric, "EarlyStopping")
        if is_better(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        if self.bad_evals > self.patience:
            self.stopped_step = step
            trainer.should_stop = True
            log.info("early stopping at step %d: %s did not improve for %d evaluations", step, self.metric,
                     self.bad_evals)


class ProgressBar(Callback):
    """A tqdm bar over the fit's steps with the current loss terms."""

    def __init__(self, mininterval: float = 0.5) -> None:
        self.mininterval = float(mininterval)
        self.bar: Any = None

    def on_fit_start(self, trainer: PatchTrainer) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.max_steps, initial=trainer.step, desc=trainer.run_name, dynamic_ncols=True,
                        mininterval=self.mininterval, leave=False)

    def on_step_end(self, trainer: PatchTrainer, step: int, logs: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k != "step"}, refresh=False)

    def teardown(self, trainer: PatchTrainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
