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
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from pandemonium.errors import PandemoniumError

logger = logging.getLogger(__name__)

Batch = Tensor | dict[str, Tensor]

__all__ = [
    "Batch",
    "PipelineBase",
    "StageError",
    "call_log_vizualizations",
    "check_serialisable",
    "derive_seed",
    "params_to_lists",
]

KEY_SEPARATOR = "/"
"""Joins a patch key and a parameter name (``"patch_a/shift_0"``) and, in a :class:`Pipeline`, a stage
prefix and that (``"2_RandomScroll/patch_a/shift_0"``)."""


class StageError(PandemoniumError, ValueError):
    """Bad input or a broken contract in a pipeline stage; the message names the stage."""


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def derive_seed(seed: int, position: int) -> int:
    """Seed of the stage at ``position`` of a pipeline seeded with ``seed``.

    A hash rather than ``seed + position`` so that neighbouring run seeds do not share streams
    between neighbouring stages (seed 0/stage 1 vs seed 1/stage 0).
    """
    digest = hashlib.sha256(f"pandemonium-stage:{int(seed)}:{int(position)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


_SCALARS = (str, int, float, bool, type(None))


def _find_unserialisable(value: Any, path: str) -> tuple[str, Any] | None:
    if isinstance(value, _SCALARS):
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _find_unserialisable(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, Mapping):
        for k, item in value.items():
            if not isinstance(k, str):
                return f"{path} (key {k!r})", k
            found = _find_unserialisable(item, f"{path}[{k!r}]")
            if found:
                return found
        return None
    return path, value


def check_serialisable(stage_name: str, params: Any) -> None:
    """Raise :class:`StageError` naming the stage and key when ``params`` is not plain JSON/YAML data."""
    if not isinstance(params, Mapping):
        raise StageError(f"stage {stage_name!r}: params must be a dict, got {type(params).__name__}")
    for key, value in params.items():
        if not isinstance(key, str):
            raise StageError(f"stage {stage_name!r}: params keys must be str, got {key!r}")
        found = _find_unserialisable(value, f"params[{key!r}]")
        if found:
            where, bad = found
            raise StageError(
                f"stage {stage_name!r}: {where} = {bad!r} of type {type(bad).__name__} is not "
                "JSON/YAML-serialisable; params must hold only str/int/float/bool/None/list/dict "
                "(e.g. str(path), float(x), tensor.tolist()) so that type(stage)(**stage.params) "
                "rebuilds the stage"
            )


def params_to_lists(params: Mapping[str, Tensor], stage_name: str = "stage") -> dict[str, np.ndarray]:
    """Turn sampled tensors ``{name: (B, ...)}`` into 1-D arrays of length B.

    A multi-value parameter ``(B, k)`` becomes ``name_0 … name_{k-1}``; ``(B, k, m)`` becomes
    ``name_{i}_{j}``. The inverse needs the layout (see :meth:`PipelineBase._params_from_dict`).
    """
    out: dict[str, np.ndarray] = {}
    for name, value in params.items():
        if not isinstance(value, Tensor) or value.dim() == 0:
            raise StageError(
                f"stage {stage_name!r}: sampled parameter {name!r} must be a tensor with a leading "
                f"batch dimension, got {type(value).__name__} {getattr(value, 'shape', '')}"
            )
        arr = value.detach().cpu().numpy()
        if arr.ndim == 1:
            out[name] = arr.copy()  # the caller may edit it; the stage's own sample must not change
            continue
        for index in np.ndindex(*arr.shape[1:]):
            out[name + "".join(f"_{i}" for i in index)] = arr[(slice(None), *index)].copy()
    return out


def call_log_vizualizations(
    stage: nn.Module, x: Any, x_control: Any, writer: Any, step: int, logging_to_mlflow: bool = False
) -> None:
    """Call ``stage.log_vizualizations`` whether or not it accepts ``logging_to_mlflow``.

    The seed's example stage defines ``log_vizualizations(self, x, x_control, writer, step)``.
    """
    method = getattr(stage, "log_vizualizations", None)
    if method is None:
        return
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):  # builtins / C extensions: just try the full call
        method(x, x_control, writer, step, logging_to_mlflow)
        return
    parameters = signature.parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    positional = [
        p
        for p in parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if "logging_to_mlflow" in parameters or takes_kwargs:
        method(x, x_control, writer, step, logging_to_mlflow=logging_to_mlflow)
    elif len(positional) >= 5 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters.values()):
        method(x, x_control, writer, step, logging_to_mlflow)
    else:
        method(x, x_control, writer, step)


# --------------------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------------------
class PipelineBase(nn.Module):
    """Base class of every pipeline stage (see the module docstring and DESIGN.md "Stage").

    Class attributes a subclass may set:

    ``name``
        Shown in MLflow / TensorBoard and used for parameter prefixes in a :class:`Pipeline`.
    ``consumes_patch``
        ``True`` for stages that put the patch into images (implanters). Under ``control=True`` their
        output must not depend on the patch; every other stage applies the *same conditions* to
        whatever it receives (so a control pass through the whole pipeline has no patch in it).
    ``handles_dicts``
        ``True`` when :meth:`sample_params` / :meth:`apply` want the whole dict of patches (e.g. an
        implanter placing several patches into one image). Otherwise the base class applies the
        stage to each selected key separately, with independent draws, and prefixes the sampled
        names with ``"<key>/"``.
    """

    name: ClassVar[str] = "PipelineBase"
    consumes_patch: ClassVar[bool] = False
    handles_dicts: ClassVar[bool] = False
    transient_attributes: ClassVar[tuple[str, ...]] = ("_last_params",)
    """Plain attributes that may hold per-batch tensors (not moved; cleared on a device change)."""

    def __init__(self, keys: Sequence[str] | str | None = None) -> None:
        super().__init__()
        if isinstance(keys, str):
            keys = [keys]
        self.keys: list[str] | None = list(keys) if keys is not None else None
        self.params: dict[str, Any] = {}
        self.seed: int = 0
        self.position: int = 0
        self._generator: torch.Generator | None = None
        self._generator_device: torch.device = torch.device("cpu")
        self._last_params: dict[str, Tensor] | None = None
        self._last_batch_size: int | None = None

    # ---------------------------------------------------------------- params are validated on set
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "params":
            check_serialisable(str(getattr(type(self), "name", type(self).__name__)), value)
        super().__setattr__(name, value)

    # ---------------------------------------------------------------- random numbers
    def set_seed(self, seed: int, position: int = 0) -> None:
        """Seed this stage's generator from the run seed and its position in the pipeline."""
        self.seed, self.position = int(seed), int(position)
        self._generator = None  # created lazily on the stage's device

    @property
    def generator(self) -> torch.Generator:
        """The stage's own generator (never global RNG state), seeded by :meth:`set_seed`."""
        if self._generator is None:
            device = self._generator_device
            if device.type == "meta":
                device = torch.device("cpu")
            generator = torch.Generator(device=device)
            generator.manual_seed(derive_seed(self.seed, self.position))
            self._generator = generator
        return self._generator

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # Generators are not tensors, so nn.Module would leave them behind: find where ``fn`` sends
        # tensors and re-create ours there. The stream restarts from the seed after a device change
        # (CPU and CUDA streams differ anyway); dtype moves keep it.
        result = super()._apply(fn, recurse)
        source = self._generator_device if self._generator_device.type != "meta" else torch.device("cpu")
        try:
            probe = fn(torch.empty(0, device=source))
        except (RuntimeError, NotImplementedError):  # fn cannot take an empty probe: keep the generator
            return result
        if isinstance(probe, Tensor) and probe.device != self._generator_device:
            self._generator_device = probe.device
            self._generator = None
            self._last_params = None  # per-batch values on the old device
        return result

    def _draw_device(self) -> torch.device:
        return self.generator.device

    def uniform(self, low: float | Tensor, high: float | Tensor, shape: Sequence[int], device=None) -> Tensor:
        """``U(low, high)`` of ``shape`` from the stage's generator, returned on ``device``."""
        u = torch.rand(tuple(shape), generator=self.generator, device=self._draw_device())
        u = u.to(device) if device is not None else u
        return low + (high - low) * u

    def normal(self, shape: Sequence[int], device=None, mean: float = 0.0, std: float = 1.0) -> Tensor:
        z = torch.randn(tuple(shape), generator=self.generator, device=self._draw_device())
        z = z.to(device) if device is not None else z
        return mean + std * z

    def randint(self, low: int, high: int, shape: Sequence[int], device=None) -> Tensor:
        """Integers in ``[low, high)``."""
        r = torch.randint(low, high, tuple(shape), generator=self.generator, device=self._draw_device())
        return r.to(device) if device is not None else r

    def bernoulli(self, p: float, shape: Sequence[int], device=None) -> Tensor:
        """Boolean tensor, ``True`` with probability ``p``."""
        return self.uniform(0.0, 1.0, shape, device) < p

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

    def _split_output(self, out: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if isinstance(out, tuple):
            if len(out) != 2 or not isinstance(out[1], dict):
                raise StageError(f"stage {self.name!r}: apply() must return y or (y, kwargs)")
            y, new_kwargs = out
            merged = dict(kwargs)
            merged.update(new_kwargs)
            return y, merged
        return out, kwargs

    def _selected_keys(self, x: Mapping[str, Any]) -> list[str]:
        self._check_keys(x)
        return list(self.keys) if self.keys is not None else list(x.keys())

    def _check_keys(self, x: Mapping[str, Any]) -> None:
        if self.keys is None:
            return
        missing = [k for k in self.keys if k not in x]
        if missing:
            raise StageError(
                f"stage {self.name!r}: keys {missing} not in the input dict; available patch keys: "
                f"{sorted(x.keys())}"
            )

    def _forward_dict(self, x, control, evaluate, params, kwargs):
        selected = self._selected_keys(x)
        out = dict(x)
        merged_last: dict[str, Tensor] = {}
        if params is not None:
            unknown = [k for k in params if k.split(KEY_SEPARATOR, 1)[0] not in selected]
            if unknown:
                raise StageError(
                    f"stage {self.name!r}: params keys {unknown} do not start with a selected patch key "
                    f"({selected}) followed by {KEY_SEPARATOR!r}"
                )
        last = self._last_params
        for key in selected:
            value = x[key]
            if not isinstance(value, Tensor):
                raise StageError(
                    f"stage {self.name!r}: input[{key!r}] must be a tensor, got {type(value).__name__}"
                )
            prefix = key + KEY_SEPARATOR
            sub_params = None
            if params is not None:
                sub_params = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
            sub_last = None
            if control and params is None and last is not None:
                sub_last = {k[len(prefix) :]: v for k, v in last.items() if k.startswith(prefix)}
                if not sub_last and self._layout(value.shape, value.device, evaluate):
                    raise self._no_previous_sample_error()  # the previous call had no patch `key`
            sampled = self._resolve_params(value.shape, value, control, evaluate, sub_params, sub_last)
            merged_last.update({prefix + k: v for k, v in sampled.items()})
            result = self.apply(value, sampled, control=control, evaluate=evaluate, **kwargs)
            out[key], kwargs = self._split_output(result, kwargs)
        self._last_params = merged_last
        self._last_batch_size = int(x[selected[0]].shape[0]) if selected else None
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
        batch = int(batch_shape[0])
        layout = self._layout(batch_shape, device, evaluate)
        expected_flat = params_to_lists(layout, self.name) if layout else {}
        unknown = sorted(set(given) - set(expected_flat))
        if unknown:
            raise StageError(
                f"stage {self.name!r}: unknown params keys {unknown}; expected {sorted(expected_flat)}"
            )
        result: dict[str, Tensor] = {}
        for name, template in layout.items():
            trailing = tuple(template.shape[1:])
            columns = []
            for index in np.ndindex(*trailing) if trailing else [()]:
                flat_key = name + "".join(f"_{i}" for i in index)
                if flat_key not in given:
                    raise StageError(
                        f"stage {self.name!r}: params is missing key {flat_key!r} (expected a list / 1-D "
                        f"array of length {batch})"
                    )
                value = given[flat_key]
                column = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
                if column.dim() != 1 or column.shape[0] != batch:
                    raise StageError(
                        f"stage {self.name!r}: params[{flat_key!r}] has shape {tuple(column.shape)}; "
                        f"expected a list / 1-D array of length {batch}"
                    )
                columns.append(column.to(device=template.device, dtype=template.dtype))
            stacked = columns[0] if not trailing else torch.stack(columns, dim=1).reshape(batch, *trailing)
            result[name] = stacked
        return result

    # ---------------------------------------------------------------- contract methods
    def get_last_sample_as_dict(self) -> dict[str, np.ndarray]:
        """Random values of the last batch: one 1-D array of length batch per key.

        Pass it back as ``forward(x, params=...)`` to reproduce the output exactly.
        """
        if not self._last_params:
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
        ok = True
        tensors = {"x": x} if isinstance(x, Tensor) else dict(x) if isinstance(x, Mapping) else None
        if tensors is None:
            logger.warning("%s: expected a tensor or a dict of tensors, got %s", self.name, type(x).__name__)
            return False
        if isinstance(x, Mapping) and self.keys is not None:
            missing = [k for k in self.keys if k not in x]
            if missing:
                logger.warning(
                    "%s: keys %s missing from input (available: %s)", self.name, missing, sorted(x)
                )
                ok = False
        for key, value in tensors.items():
            if isinstance(value, Tensor) and value.is_floating_point() and value.device.type != "meta":
                if not bool(torch.isfinite(value).all()):
                    logger.warning("%s: input %s contains NaN or inf", self.name, key)
                    ok = False
        if ok:
            logger.info("%s: input OK", self.name)
        return ok

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
