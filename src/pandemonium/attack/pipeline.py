"""``Pipeline``: an ordered chain of stages with merged replay, evaluation and a config round trip.

>>> from pandemonium.attack import Pipeline, Resize, RandomScroll  # doctest: +SKIP
>>> pipe = Pipeline(Resize(16), RandomScroll(), seed=0)             # or Resize(16) + RandomScroll()
>>> y, kwargs = pipe(patch_batch)
>>> sample = pipe.get_last_sample_as_dict()   # {"1_RandomScroll/shift_0": array([...]), ...}
>>> y2, _ = pipe(patch_batch, params=sample)  # bit-for-bit the same as y
>>> cfg = pipe.to_config()                     # {"seed": 0, "stages": [{"_target_": ..., ...}, ...]}
>>> Pipeline.from_config(cfg)                  # an equal pipeline

A model stage built from an in-memory ``nn.Module`` cannot be written to a config: ``to_config`` puts
the placeholder ``"???"`` (OmegaConf's "missing" marker) there and logs a warning; fill it with
``Pipeline.from_config(cfg, model=my_model)``. Models configured by ``_target_`` of a factory or by
``torchscript: path`` round-trip without help.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pandemonium.attack.stages.base import Batch, PipelineBase
from pandemonium.attack.stages.contract import (
    KEY_SEPARATOR,
    ROLES,
    StageError,
    call_log_vizualizations,
    role_of,
)
from pandemonium.attack.stages.fusion import fuse_stages
from pandemonium.attack.stages.registry import resolve_stage_class, target_of

logger = logging.getLogger(__name__)

__all__ = ["Pipeline"]

MISSING = "???"


class Pipeline(nn.Module):
    """Stages applied in order; ``forward(x, control, evaluate, params, **kwargs) -> (y, kwargs)``.

    ``stage + module`` and ``module + stage`` build pipelines too, except ``nn.Sequential + stage``:
    torch's ``Sequential.__add__`` raises instead of deferring, so write ``Pipeline(sequential, stage)``.

    Plain ``nn.Module`` arguments (that are not stages) are wrapped in a
    :class:`~pandemonium.attack.stages.model.ModelStage`; nested pipelines are flattened. Every stage is
    seeded with ``stage.set_seed(seed, position)``. Sampled values are addressed by the stable prefix
    ``"{position}_{stage.name}"`` (see :attr:`prefixes`).

    ``fuse=True`` (the default) runs a :class:`RectangleImplanter` directly followed by a fusable
    ``KorniaAugment`` as one :class:`~pandemonium.attack.stages.fusion.FusedImplantWarp` (see
    :func:`~pandemonium.attack.stages.fusion.fuse_stages`); :attr:`stages` and :meth:`to_config` keep
    the stages as given, and the fused step's sample is addressed by ``"{i}_{name}+{j}_{name}"``.
    """

    def __init__(self, *stages: nn.Module, seed: int = 0, fuse: bool = True) -> None:
        super().__init__()
        flat: list[nn.Module] = []
        for index, stage in enumerate(stages):
            if isinstance(stage, Pipeline):
                flat.extend(stage.stages)
            elif isinstance(stage, PipelineBase):
                flat.append(stage)
            elif isinstance(stage, nn.Module):
                from pandemonium.attack.stages.model import ModelStage

                flat.append(ModelStage(stage))
            else:
                raise StageError(
                    f"Pipeline argument {index} is a {type(stage).__name__}, not a stage or nn.Module"
                )
        if not flat:
            raise StageError("Pipeline needs at least one stage")
        self.stages = nn.ModuleList(flat)
        self.fuse = bool(fuse)
        plan = fuse_stages(flat) if self.fuse else [((i,), stage) for i, stage in enumerate(flat)]
        # fused stand-ins are submodules (moved with .to(), their generators found by modules());
        # they share the originals' banks, whose buffers are not persistent: state_dict is unchanged
        self.fused = nn.ModuleList(module for positions, module in plan if len(positions) > 1)
        self._plan = [positions for positions, _ in plan]
        self._plan_modules = [module for _, module in plan]
        self.seed = int(seed)
        self.set_seed(self.seed)

    # ---------------------------------------------------------------- structure
    def set_seed(self, seed: int) -> None:
        """Re-seed every stage from ``seed`` and its position (restarts their random streams)."""
        self.seed = int(seed)
        for position, stage in enumerate(self.stages):
            if hasattr(stage, "set_seed"):
                stage.set_seed(self.seed, position)
        for positions, module in zip(self._plan, self._plan_modules):
            if len(positions) > 1:
                module.set_seed(self.seed, positions[0])  # the implanter's stream, then the augmentation's

    @property
    def prefixes(self) -> list[str]:
        """``"{position}_{name}"`` for each stage: stable as long as the stage list is."""
        return [f"{i}_{getattr(s, 'name', type(s).__name__)}" for i, s in enumerate(self.stages)]

    @property
    def run_prefixes(self) -> list[str]:
        """The prefix of each step actually run: a fused step joins its stages' prefixes with ``+``."""
        prefixes = self.prefixes
        return ["+".join(prefixes[i] for i in positions) for positions in self._plan]

    def run_plan(self) -> list[tuple[str, nn.Module]]:
        """``(prefix, module)`` of each step :meth:`forward` runs, fused stand-ins included."""
        return list(zip(self.run_prefixes, self._plan_modules))

    def stages_with_role(self, role: str) -> list[int]:
        """Positions of the stages whose role (see :data:`~pandemonium.attack.stages.contract.ROLES`) is
        ``role``, in pipeline order."""
        if role not in ROLES:
            raise StageError(f"Pipeline: unknown stage role {role!r}; roles are {ROLES}")
        return [i for i, stage in enumerate(self.stages) if role_of(stage) == role]

    def find_stage(self, role: str) -> nn.Module:
        """The first stage with ``role``, e.g. ``pipeline.find_stage("implant")`` for the implanter
        (whatever its position); :class:`StageError` listing the stages' roles if there is none."""
        positions = self.stages_with_role(role)
        if not positions:
            roles = {prefix: role_of(stage) for prefix, stage in zip(self.prefixes, self.stages)}
            raise StageError(f"Pipeline has no stage with role {role!r}; its stages' roles are {roles}")
        return self.stages[positions[0]]

    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.stages)

    def __getitem__(self, index: int) -> nn.Module:
        return self.stages[index]

    def __add__(self, other: nn.Module) -> Pipeline:
        if isinstance(other, Pipeline):
            return Pipeline(*self.stages, *other.stages, seed=self.seed, fuse=self.fuse)
        if isinstance(other, nn.Module):
            return Pipeline(*self.stages, other, seed=self.seed, fuse=self.fuse)
        return NotImplemented

    def __radd__(self, other: nn.Module) -> Pipeline:
        if isinstance(other, nn.Module):
            return Pipeline(other, *self.stages, seed=self.seed, fuse=self.fuse)
        return NotImplemented

    # ---------------------------------------------------------------- running
    def split_params(self, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Split a merged sample into one dict per stage; unknown prefixes are an error."""
        prefixes = self.run_prefixes
        per_stage: list[dict[str, Any]] = [{} for _ in prefixes]
        lookup = {p: i for i, p in enumerate(prefixes)}
        for key, value in params.items():
            head, sep, rest = key.partition(KEY_SEPARATOR)
            if not sep or head not in lookup:
                raise StageError(
                    f"Pipeline: params key {key!r} does not start with a stage prefix; expected one of "
                    f"{prefixes} followed by {KEY_SEPARATOR!r}"
                )
            per_stage[lookup[head]][rest] = value
        return per_stage

    def forward(
        self,
        x: Batch,
        control: bool = False,
        evaluate: bool = False,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, Any]]:
        """Run every stage; ``params`` (from :meth:`get_last_sample_as_dict`) replays all of them."""
        y, kwargs, _ = self._run(x, control, evaluate, params, kwargs, keep_inputs=False)
        return y, kwargs

    def _run(self, x, control, evaluate, params, kwargs, keep_inputs):
        per_stage = self.split_params(params) if params is not None else [None] * len(self._plan)
        inputs = []
        for (prefix, stage), stage_params in zip(self.run_plan(), per_stage):
            if keep_inputs:
                inputs.append(x)
            try:
                # no params given: pass none, so each stage keeps its own default (None, or {} in
                # electricmayhem-style stages)
                given = {} if stage_params is None else {"params": stage_params}
                out = stage(x, control=control, evaluate=evaluate, **given, **kwargs)
            except Exception as err:
                if hasattr(err, "add_note"):  # Python >= 3.11: say which stage without changing the type
                    err.add_note(f"in pipeline stage {prefix}")
                raise
            if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
                raise StageError(
                    f"stage {getattr(stage, 'name', type(stage).__name__)!r} must return (y, kwargs), "
                    f"got {type(out).__name__}"
                )
            x, kwargs = out
        return x, kwargs, inputs

    def get_last_sample_as_dict(self) -> dict[str, Any]:
        """Merged samples of all stages, keys prefixed ``"{position}_{name}/"``."""
        merged: dict[str, Any] = {}
        for prefix, stage in self.run_plan():
            sample = stage.get_last_sample_as_dict() if hasattr(stage, "get_last_sample_as_dict") else {}
            for key, value in (sample or {}).items():
                merged[f"{prefix}{KEY_SEPARATOR}{key}"] = value
        return merged

    @torch.no_grad()
    def evaluate(
        self,
        x: Batch,
        writer: Any = None,
        step: int = 0,
        logging_to_mlflow: bool = False,
        params: Mapping[str, Any] | None = None,
        strict_visualizations: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Run an evaluation batch and its control batch (same conditions, no patch) under no_grad.

        Each stage's ``log_vizualizations`` gets its own input batch and the matching control input
        when ``writer`` is given. A failing visualisation is logged as a warning naming the stage
        (so a long run is not lost to a plotting bug) unless ``strict_visualizations``.

        Returns ``{"output", "control_output", "kwargs", "control_kwargs", "params"}`` where
        ``params`` is the merged sample that replays this batch.
        """
        y, out_kwargs, inputs = self._run(x, False, True, params, dict(kwargs), keep_inputs=True)
        sample = self.get_last_sample_as_dict()
        y_control, control_kwargs, control_inputs = self._run(
            x, True, True, None, dict(kwargs), keep_inputs=True
        )
        if writer is not None:
            for (prefix, stage), x_in, x_ctrl in zip(self.run_plan(), inputs, control_inputs):
                try:
                    call_log_vizualizations(stage, x_in, x_ctrl, writer, step, logging_to_mlflow)
                except Exception as err:
                    if strict_visualizations:
                        raise
                    message = f"stage {prefix}: log_vizualizations failed: {type(err).__name__}: {err}"
                    logger.warning(message)
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
        return {
            "output": y,
            "control_output": y_control,
            "kwargs": out_kwargs,
            "control_kwargs": control_kwargs,
            "params": sample,
        }

    @torch.no_grad()
    def validate(self, x: Batch, evaluate: bool = True, **kwargs: Any) -> bool:
        """Run every stage's ``validate`` on its own input; log findings; ``True`` if all pass."""
        ok = True
        for prefix, stage in self.run_plan():
            if hasattr(stage, "validate"):
                try:
                    stage_ok = stage.validate(x)
                except Exception as err:
                    logger.error("stage %s: validate() raised %s: %s", prefix, type(err).__name__, err)
                    return False
                if stage_ok is False:
                    logger.warning("stage %s: validation failed", prefix)
                    ok = False
            try:
                x, kwargs = stage(x, evaluate=evaluate, **kwargs)
            except Exception as err:
                logger.error("stage %s: cannot run on this batch: %s: %s", prefix, type(err).__name__, err)
                return False
        logger.info("pipeline validation %s", "passed" if ok else "found problems")
        return ok

    def get_description(self) -> str:
        """Markdown list of the stages' descriptions."""
        lines = [f"### Pipeline (seed {self.seed})", ""]
        for prefix, stage in zip(self.prefixes, self.stages):
            description = stage.get_description() if hasattr(stage, "get_description") else prefix
            lines.append(f"{prefix.split('_', 1)[0]}. {description}".replace("\n\n", "\n   "))
        return "\n".join(lines)

    # ---------------------------------------------------------------- configs
    def to_config(self) -> dict[str, Any]:
        """Plain-data config ``{"seed": ..., "stages": [{"_target_": ..., **params}, ...]}``.

        An in-memory model becomes the placeholder ``"???"`` (logged at INFO, not as a warning: callers
        such as the attack mode store the model as its own artifact, and :meth:`from_config` raises a
        clear error if the placeholder is not filled).
        """
        stages = []
        for prefix, stage in zip(self.prefixes, self.stages):
            if hasattr(stage, "to_config"):
                cfg = stage.to_config()
            else:
                cfg = {"_target_": target_of(type(stage)), **dict(getattr(stage, "params", {}))}
            if _contains_missing(cfg):
                message = (
                    f"stage {prefix} holds an in-memory model that cannot be serialised; its config has the "
                    f"placeholder {MISSING!r}: pass Pipeline.from_config(cfg, model=...) to fill it"
                )
                logger.info(message)
            stages.append(cfg)
        config: dict[str, Any] = {"seed": self.seed, "stages": stages}
        if not self.fuse:
            config["fuse"] = False
        return config

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of :meth:`to_config`; also written to ``path`` if given."""
        text = OmegaConf.to_yaml(OmegaConf.create(self.to_config()))
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, source: str | Path, **models: Any) -> Pipeline:
        """Build from a YAML file path or YAML text (``models`` as in :meth:`from_config`)."""
        is_text = isinstance(source, str) and ("\n" in source or ":" in source and not Path(source).exists())
        if is_text:
            cfg = OmegaConf.create(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"pipeline config {str(path)!r} does not exist")
            cfg = OmegaConf.load(path)
        return cls.from_config(cfg, **models)

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any] | DictConfig, model: Any = None, eval_model: Any = None
    ) -> Pipeline:
        """Build a pipeline from :meth:`to_config` output (a dict, ``DictConfig`` or loaded YAML).

        ``_target_`` may be a registered short name (``"RandomScroll"``) or an import path.
        ``model`` / ``eval_model`` fill ``"???"`` placeholders of model stages.
        """
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(cfg, Mapping) or "stages" not in cfg:
            raise StageError(f"Pipeline config needs a 'stages' list; got keys {list(cfg or {})}")
        stages = []
        for position, stage_cfg in enumerate(cfg["stages"]):
            stages.append(_build_stage(position, stage_cfg, model=model, eval_model=eval_model))
        return cls(*stages, seed=int(cfg.get("seed", 0)), fuse=bool(cfg.get("fuse", True)))


def _contains_missing(value: Any) -> bool:
    if isinstance(value, str):
        return value == MISSING
    if isinstance(value, Mapping):
        return any(_contains_missing(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_missing(v) for v in value)
    return False


def _build_stage(position: int, stage_cfg: Any, model: Any = None, eval_model: Any = None) -> nn.Module:
    if isinstance(stage_cfg, DictConfig):
        stage_cfg = OmegaConf.to_container(stage_cfg, resolve=True)
    if not isinstance(stage_cfg, Mapping) or "_target_" not in stage_cfg:
        raise StageError(f"Pipeline config: stage {position} needs a '_target_', got {stage_cfg!r}")
    kwargs = dict(stage_cfg)
    target = kwargs.pop("_target_")
    stage_cls = resolve_stage_class(str(target))
    from pandemonium.attack.stages.model import ModelStage

    try:
        if isinstance(stage_cls, type) and issubclass(stage_cls, ModelStage):
            return stage_cls.from_config(kwargs, model=model, eval_model=eval_model)
        return stage_cls(**kwargs)
    except StageError as err:
        raise StageError(f"Pipeline config: stage {position} ({target}): {err}") from err
    except TypeError as err:
        raise StageError(f"Pipeline config: stage {position} ({target}) rejected its kwargs: {err}") from err
