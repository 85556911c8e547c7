"""What a tune trial is made of: the search space from config, its fingerprint, the pruning hook and the
validation-fold spec a trial is scored on. The scheduler that runs the study is :mod:`pandemonium.modes.tune`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pandemonium.attack.spec import AttackSpec
from pandemonium.errors import ConfigError
from pandemonium.plain import to_plain

__all__ = ["PruningCallback", "TuneError", "parse_space", "space_fingerprint", "validation_spec"]

_MISSING = object()


class TuneError(ConfigError):
    """A search space, study name or ``use_best`` that cannot work (bad input, exit code 2)."""


def parse_space(space: Mapping[str, Any], cfg: DictConfig | None = None) -> dict[str, tuple[str, Any]]:
    """``{name: (config key, optuna distribution)}`` from the ``tune.space`` config.

    >>> parse_space({"lr": {"key": "attack.lr", "type": "float", "low": 0.01, "high": 0.1, "log": True}})["lr"][0]
    'attack.lr'
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = to_plain(space) or {}
    if not space:
        raise TuneError("tune.space is empty: name at least one parameter (see configs/tune/default.yaml)")
    out: dict[str, tuple[str, Any]] = {}
    for name, spec in space.items():
        where = f"tune.space.{name}"
        if not isinstance(spec, Mapping) or not spec.get("key"):
            raise TuneError(f"{where}: needs a config `key` (e.g. attack.lr) and a `type`")
        key, kind = str(spec["key"]), str(spec.get("type", "float"))
        if cfg is not None and OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise TuneError(f"{where}.key={key!r} is not a key of the composed config")
        if kind == "categorical":
            choices = list(spec.get("choices") or [])
            if not choices:
                raise TuneError(f"{where}: categorical with no choices")
            out[name] = (key, CategoricalDistribution(choices))
            continue
        if kind not in ("float", "int"):
            raise TuneError(f"{where}.type={kind!r}: use float, int or categorical")
        low, high, use_log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
        if low is None or high is None:
            raise TuneError(f"{where}: {kind} needs low and high")
        if not float(low) < float(high):
            raise TuneError(f"{where}: empty or inverted range low={low} >= high={high}")
        if use_log and float(low) <= 0:
            raise TuneError(f"{where}: a log range needs low > 0, got low={low}")
        step = spec.get("step")
        if kind == "int":
            out[name] = (key, IntDistribution(int(low), int(high), log=use_log, step=int(step or 1)))
        else:
            out[name] = (key, FloatDistribution(float(low), float(high), log=use_log,
                                                step=None if step is None else float(step)))
    return out


def space_fingerprint(space: Mapping[str, tuple[str, Any]]) -> str:
    from optuna.distributions import distribution_to_json

    return json.dumps({n: [k, json.loads(distribution_to_json(d))] for n, (k, d) in sorted(space.items())},
                      sort_keys=True)


class PruningCallback:
    """PatchTrainer hook: report the evaluation metric to the trial after each evaluation, stop the
    fit (``optuna.TrialPruned``) when the pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric

    def on_evaluation_end(self, trainer: Any, step: int, result: Any) -> None:
        import optuna

        value = result.summary.get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), int(step))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.metric}={float(value):.4g})")

    on_validation_end = on_evaluation_end  # the hook's name before the trainer moved to attack/training


def validation_spec(spec: AttackSpec, struct: Any, data_dir: str, fold: int) -> AttackSpec:
    """The spec with the task's own image bank evaluating on the validation fold (never the test split)."""
    bank = {"task": struct.name, "data_dir": str(data_dir), "train_split": "train", "eval_split": "val",
            "fold": int(fold)}
    stages = tuple({**stage, "bank": dict(bank)} if stage.get("bank", "") in (None, "task") else dict(stage)
                   for stage in spec.stages)
    return dataclasses.replace(spec, stages=stages)
