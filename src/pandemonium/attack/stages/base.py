"""The stage contract: :class:`PipelineBase`.

A stage is a ``torch.nn.Module`` that maps a batch (a tensor, or a dict of named batches when a
pipeline carries several patches) to ``(y, kwargs)``. Built-in stages follow a Kornia-style split:

* :meth:`PipelineBase.sample_params` draws this batch's random values from the stage's own
  ``torch.Generator`` and returns ``{name: Tensor}`` with a leading batch dimension;
* :meth:`PipelineBase.apply` applies the stage with those values.

``forward`` samples (or takes ``params=``), remembers the sample, and applies. Everything else of the
contract -- replay from :meth:`get_last_sample_as_dict`, ``control=True``, dicts of patches with
``keys``, seeding, moving between devices, serialisable ``params`` -- lives here, so a subclass only
writes the single-tensor case::

    class AddNoise(PipelineBase):
        name = "AddNoise"

        def __init__(self, sigma: float = 0.1, keys=None):
            super().__init__(keys=keys)
            self.sigma = sigma
            self.params = {"sigma": sigma, "keys": keys}

        def sample_params(self, batch_shape, device, evaluate=False):
            return {"level": self.uniform(0.0, self.sigma, (batch_shape[0],), device)}

        def apply(self, x, params, control=False, evaluate=False, **kwargs):
            return x + params["level"].view(-1, 1, 1, 1).to(x.dtype)

Stages written the seed's way (overriding ``forward`` and ``get_last_sample_as_dict`` directly,
``log_vizualizations`` without ``logging_to_mlflow``) are supported as well: the pipeline only relies
on the public methods and calls :func:`call_log_vizualizations`, which adapts to the signature.

Stages written for electricmayhem run once they subclass this class: a stage that defines
``_forward_single(x, control, evaluate, params, key=None, **kwargs)`` is called with it (once per
selected patch of a dict input, ``key`` naming the patch, the keys taken from ``params["keys"]``);
``params={}`` means "no params" like ``params=None``; a ``lastsample`` dict of tensors is the last
sample (moved with the stage, read by the default :meth:`get_last_sample_as_dict`); ``name`` falls
back to the class name; the stage may draw from global RNG state in its own ``sample``. A stage's
``role`` ("create", "implant", "augment", "model", "other") says what it does; ``consumes_patch =
True`` is the older spelling of ``role = "implant"``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from pandemonium.attack.stages.contract import (
    ROLES,
    StageError,
    check_serialisable,
    params_from_lists,
    params_to_lists,
    validate_batch,
)
from pandemonium.attack.stages.patch_dicts import PatchDictForwarding
from pandemonium.attack.stages.seeded import SeededModule

Batch = Tensor | dict[str, Tensor]

__all__ = ["Batch", "PipelineBase", "StageError", "stage_convention"]


def stage_convention(stage: Any) -> str:
    """How a stage is written: ``"_forward_single"`` (electricmayhem's per-patch method),
    ``"sample/apply"`` (pandemonium's split) or ``"forward"`` (its own ``forward``, the seed's way)."""
    cls = stage if isinstance(stage, type) else type(stage)
    if not (isinstance(cls, type) and issubclass(cls, PipelineBase)):
        return "forward"
    if cls._forward_single is not PipelineBase._forward_single:
        return "_forward_single"
    if cls.sample_params is not PipelineBase.sample_params or cls.apply is not PipelineBase.apply:
        return "sample/apply"
    return "forward"

# --------------------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------------------
class PipelineBase(PatchDictForwarding, SeededModule):
    """Base class of every pipeline stage (see the module docstring and DESIGN.md "Stage").

    Class attributes a subclass may set:

    ``name``
        Shown in MLflow / TensorBoard and used for parameter prefixes in a :class:`Pipeline`;
        defaults to the class name.
    ``role``
        One of :data:`ROLES`. ``"implant"`` for stages that put the patch into images: under
        ``control=True`` their output must not depend on the patch; every other stage applies the
        *same conditions* to whatever it receives (so a control pass through the whole pipeline has
        no patch in it). ``consumes_patch`` is derived from it (setting ``consumes_patch = True``, the
        older spelling, makes the role ``"implant"``).
    ``handles_dicts``
        ``True`` when :meth:`sample_params` / :meth:`apply` want the whole dict of patches (e.g. an
        implanter placing several patches into one image). Otherwise the base class applies the
        stage to each selected key separately, with independent draws, and prefixes the sampled
        names with ``"<key>/"``.
    """

    name: ClassVar[str] = "PipelineBase"
    role: ClassVar[str] = "other"
    consumes_patch: ClassVar[bool] = False
    handles_dicts: ClassVar[bool] = False
    transient_attributes: ClassVar[tuple[str, ...]] = ("_last_params", "lastsample")
    """Plain attributes that may hold per-batch tensors: the last sample (``_last_params`` is cleared
    on a device change, electricmayhem's ``lastsample`` dict is moved with the stage)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__ and (cls.name == "PipelineBase" or cls.name.startswith("_")):
            # electricmayhem stages may leave it out; a subclass of a named stage keeps that name
            cls.name = cls.__name__
        if "role" not in cls.__dict__ and "consumes_patch" in cls.__dict__:
            inherited = cls.role
            cls.role = "implant" if cls.consumes_patch else ("other" if inherited == "implant" else inherited)
        if cls.role not in ROLES:
            raise StageError(f"stage {cls.name!r}: role {cls.role!r} is not one of {ROLES}")
        cls.consumes_patch = cls.role == "implant"

    def __init__(self, keys: Sequence[str] | str | None = None) -> None:
        super().__init__()
        if isinstance(keys, str):
            keys = [keys]
        self.keys: list[str] | None = list(keys) if keys is not None else None
        self.params: dict[str, Any] = {}
        self._last_params: dict[str, Tensor] | None = None
        self._last_batch_size: int | None = None

    # ---------------------------------------------------------------- params are validated on set
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "params":
            check_serialisable(str(getattr(type(self), "name", type(self).__name__)), value)
        super().__setattr__(name, value)

    def _after_move(self, fn, probe, new_device: bool) -> None:
        if new_device:
            self._last_params = None  # per-batch values on the old device
        lastsample = self.__dict__.get("lastsample")
        if isinstance(lastsample, dict):  # electricmayhem's control pass reads it after a move
            self.__dict__["lastsample"] = {
                k: fn(v) if isinstance(v, Tensor) and v.is_floating_point() else
                v.to(probe.device) if isinstance(v, Tensor) and isinstance(probe, Tensor) else v
                for k, v in lastsample.items()
            }

    # ---------------------------------------------------------------- Kornia-style split
    def sample_params(
        self, batch_shape: torch.Size, device: torch.device, evaluate: bool = False
    ) -> dict[str, Tensor]:
        """Draw this batch's random values; each tensor has leading dimension ``batch_shape[0]``.

        Deterministic stages keep the default (no parameters). Draw only through
        :attr:`generator` (or :meth:`uniform` / :meth:`normal` / :meth:`randint` / :meth:`bernoulli`).
        """
        return {}

    def apply(
        self,
        x: Batch,
        params: dict[str, Tensor],
        control: bool = False,
        evaluate: bool = False,
        **kwargs: Any,
    ) -> Batch | tuple[Batch, dict[str, Any]]:
        """Apply the stage with ``params``; return ``y`` or ``(y, kwargs)`` to add metadata."""
        raise NotImplementedError(f"stage {self.name!r} must implement apply() or override forward()")

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        x: Batch,
        control: bool = False,
        evaluate: bool = False,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[Batch, dict[str, Any]]:
        """Run the stage: sample (or replay ``params`` / the last sample if ``control``), then apply."""
        if params is not None and len(params) == 0:
            params = None  # electricmayhem's default is params={}: "nothing given, draw"
        if type(self)._forward_single is not PipelineBase._forward_single:
            return self._forward_per_patch(x, control, evaluate, params, kwargs)
        if isinstance(x, Mapping) and not self.handles_dicts:
            return self._forward_dict(x, control, evaluate, params, kwargs)
        if isinstance(x, Tensor) and self.keys is not None and not self.handles_dicts:
            raise StageError(
                f"stage {self.name!r} was configured with keys={self.keys} but got a single tensor; "
                "keys select patches from a dict input -- pass a dict or drop keys"
            )
        if isinstance(x, Mapping):
            self._check_keys(x)
        batch_shape = self._batch_shape(x)
        sampled = self._resolve_params(batch_shape, x, control, evaluate, params)
        self._last_params = sampled
        self._last_batch_size = int(batch_shape[0]) if len(batch_shape) else None
        out = self.apply(x, sampled, control=control, evaluate=evaluate, **kwargs)
        return self._split_output(out, kwargs)

    def _forward_single(
        self, x: Tensor, control: bool = False, evaluate: bool = False, params: Any = None,
        key: str | None = None, **kwargs: Any,
    ) -> tuple[Tensor, dict[str, Any]]:
        """electricmayhem's per-patch method: a subclass that defines it is called with it (see the
        module docstring); the default is the identity."""
        return x, kwargs

    def _split_output(self, out: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if isinstance(out, tuple):
            if len(out) != 2 or not isinstance(out[1], dict):
                raise StageError(f"stage {self.name!r}: apply() must return y or (y, kwargs)")
            y, new_kwargs = out
            merged = dict(kwargs)
            merged.update(new_kwargs)
            return y, merged
        return out, kwargs

    def _batch_shape(self, x: Batch) -> torch.Size:
        if isinstance(x, Tensor):
            return x.shape
        if isinstance(x, Mapping):
            keys = self.keys if self.keys is not None else list(x.keys())
            for k in keys:
                if isinstance(x[k], Tensor):
                    return x[k].shape
        raise StageError(
            f"stage {self.name!r}: expected a tensor or a dict of tensors, got {type(x).__name__}"
        )

    def _no_previous_sample_error(self) -> StageError:
        return StageError(
            f"stage {self.name!r}: control=True replays the conditions of the previous call, but there "
            "was none; call the stage once without control (or pass params=...)"
        )

    def _resolve_params(self, batch_shape, x, control, evaluate, params, last=None) -> dict[str, Tensor]:
        device = self._batch_device(x)
        if params is not None:
            return self._params_from_dict(params, batch_shape, device, evaluate)
        if control:
            last = self._last_params if last is None else last
            if last is None:
                # a deterministic stage has nothing to replay
                layout = self._layout(batch_shape, device, evaluate)
                if layout:
                    raise self._no_previous_sample_error()
                return {}
            for name, value in last.items():
                if value.shape[0] != int(batch_shape[0]):
                    raise StageError(
                        f"stage {self.name!r}: control batch has {int(batch_shape[0])} samples but the "
                        f"previous call drew {name!r} for {value.shape[0]}"
                    )
            return last
        sampled = self.sample_params(batch_shape, device, evaluate)
        self._check_sampled(sampled, int(batch_shape[0]))
        return sampled

    @staticmethod
    def _batch_device(x: Batch) -> torch.device:
        if isinstance(x, Tensor):
            return x.device
        for value in x.values():
            if isinstance(value, Tensor):
                return value.device
        return torch.device("cpu")

    def _check_sampled(self, sampled: Mapping[str, Tensor], batch: int) -> None:
        for name, value in sampled.items():
            if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] != batch:
                raise StageError(
                    f"stage {self.name!r}: sample_params() returned {name!r} with shape "
                    f"{tuple(getattr(value, 'shape', ()))}; every sampled value needs leading dimension "
                    f"batch={batch}"
                )

    def _layout(self, batch_shape, device, evaluate) -> dict[str, Tensor]:
        """Shapes/dtypes of what :meth:`sample_params` returns, without consuming random numbers."""
        generator = self.generator
        state = generator.get_state()
        try:
            layout = self.sample_params(batch_shape, device, evaluate)
        finally:
            generator.set_state(state)
        return layout

    def _params_from_dict(self, given: Mapping[str, Any], batch_shape, device, evaluate) -> dict[str, Tensor]:
        return params_from_lists(given, self._layout(batch_shape, device, evaluate), int(batch_shape[0]), self.name)

    # ---------------------------------------------------------------- contract methods
    def get_last_sample_as_dict(self) -> dict[str, np.ndarray]:
        """Random values of the last batch: one 1-D array of length batch per key.

        Pass it back as ``forward(x, params=...)`` to reproduce the output exactly.
        """
        if not self._last_params:
            lastsample = self.__dict__.get("lastsample")
            if isinstance(lastsample, Mapping) and lastsample:
                return {
                    str(k): np.asarray(v.detach().cpu() if isinstance(v, Tensor) else v).reshape(-1).copy()
                    for k, v in lastsample.items()
                }
            return {}
        return params_to_lists(self._last_params, self.name)

    def get_description(self) -> str:
        """Markdown description for the MLflow run."""
        own_doc = type(self).__dict__.get("__doc__") or ""  # not the inherited base-class docstring
        doc = " ".join(inspect.cleandoc(own_doc).split("\n\n")[0].split())
        params = json.dumps(self.params, sort_keys=True, default=str)
        text = f"**{self.name}**"
        if doc:
            text += f": {doc}"
        return text + f"\n\nparams: `{params}`"

    def log_vizualizations(
        self, x: Batch, x_control: Batch, writer: Any, step: int, logging_to_mlflow: bool = False
    ) -> None:
        """Write diagnostics to TensorBoard (``writer`` is a ``SummaryWriter``); default: nothing."""

    def validate(self, x: Batch) -> bool:
        """Check that this stage can run on ``x``; log findings with ``logging``; return ``True`` if OK."""
        return validate_batch(self.name, x, self.keys)

    # ---------------------------------------------------------------- composition and repr
    def __add__(self, other: nn.Module) -> nn.Module:
        from pandemonium.attack.pipeline import Pipeline

        if isinstance(other, Pipeline):
            return Pipeline(self, *other.stages, seed=other.seed)
        return Pipeline(self, other)

    def __radd__(self, other: nn.Module) -> nn.Module:
        from pandemonium.attack.pipeline import Pipeline

        if isinstance(other, nn.Module):
            return Pipeline(other, self)
        return NotImplemented

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())
