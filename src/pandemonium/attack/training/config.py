"""Plain settings of the trainer: :class:`EvaluationSettings` and the config -> kwargs mapping used by
:meth:`PatchTrainer.from_config <pandemonium.attack.training.trainer.PatchTrainer.from_config>`.

>>> EvaluationSettings(num_eval=16, every=10).as_dict()
{'num_eval': 16, 'batch_size': None, 'every': 10, 'target_class': None, 'split': 'eval'}
>>> sorted(trainer_kwargs({"batch_size": 4, "evaluation": {"every": 5}, "callbacks": {"mlflow": False}}))
['batch_size', 'callbacks', 'evaluation']
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pandemonium.attack.training.defaults import CALLBACKS, default_callbacks
from pandemonium.build import instantiate
from pandemonium.errors import ConfigError
from pandemonium.plain import to_plain

__all__ = ["EvaluationSettings", "TrainerSettingError", "derived_seed", "trainer_kwargs"]

#: keys of a trainer config besides ``evaluation`` and ``callbacks`` (the constructor's keywords)
TRAINER_KEYS = ("patch", "batch_size", "optimizer", "schedule", "seed", "device", "out_dir", "run_name",
                "grad_accumulation", "sharpness_aware", "devices", "accelerator", "strategy")


class TrainerSettingError(ConfigError, ValueError):
    """A trainer setting is out of range or unknown; the message names the setting and the value."""


@dataclass(frozen=True)
class EvaluationSettings:
    """The fixed evaluation of a fit.

    Args:
        num_eval: number of evaluation samples (conditions drawn once, replayed at every evaluation).
        batch_size: evaluation batch size (default: the training batch size).
        every: optimiser steps between evaluations (and checkpoints); also at step 0 and the end.
        target_class: target class for the targeted success rate (classification).
        split: name of the split the pipeline evaluates on (``"val"`` when fitting a task's patch).
    """

    num_eval: int = 32
    batch_size: int | None = None
    every: int = 50
    target_class: int | None = None
    split: str = "eval"

    def __post_init__(self) -> None:
        bad = {k: v for k, v in (("num_eval", self.num_eval), ("every", self.every),
                                 ("batch_size", self.batch_size or 1)) if int(v) < 1}
        if bad:
            raise TrainerSettingError(f"EvaluationSettings: {bad} must be >= 1")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def derived_seed(purpose: str, seed: int) -> int:
    """A seed for one purpose of a run (e.g. the evaluation conditions) derived from the run seed."""
    # a hash, not seed + k: neighbouring run seeds must not share evaluation conditions
    digest = hashlib.sha256(f"pandemonium-trainer:{purpose}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def trainer_kwargs(config: Mapping[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Constructor keywords of ``PatchTrainer`` from a plain (or OmegaConf) config.

    ``evaluation`` is a mapping of :class:`EvaluationSettings` fields; ``callbacks`` is either a
    mapping of :func:`~pandemonium.attack.training.defaults.default_callbacks` keywords or a list of
    callbacks / ``_target_`` specs (short names: the classes of this package). Other keys are the
    constructor's (:data:`TRAINER_KEYS`); an unknown key is an error that lists the known ones.
    """
    cfg = {**(to_plain(config) if config is not None else {}), **overrides}
    out: dict[str, Any] = {}
    unknown = sorted(set(cfg) - set(TRAINER_KEYS) - {"evaluation", "callbacks"})
    if unknown:
        raise TrainerSettingError(
            f"trainer config: unknown keys {unknown}; known keys: {sorted([*TRAINER_KEYS, 'evaluation', 'callbacks'])}"
        )
    evaluation = cfg.pop("evaluation", None)
    if evaluation is not None:
        try:
            out["evaluation"] = (evaluation if isinstance(evaluation, EvaluationSettings)
                                 else EvaluationSettings(**dict(evaluation)))
        except TypeError as err:
            raise TrainerSettingError(f"trainer config: evaluation {evaluation!r}: {err}") from None
    callbacks = cfg.pop("callbacks", None)
    if isinstance(callbacks, Mapping):
        out["callbacks"] = default_callbacks(**callbacks)
    elif callbacks is not None:
        out["callbacks"] = [
            instantiate(c, what=f"trainer callback {i}", registry=CALLBACKS) if isinstance(c, Mapping) else c
            for i, c in enumerate(callbacks)
        ]
    return {**cfg, **out}
