"""The parts of the stage contract that are not the base class: errors, roles, seeds, plain params.

``PipelineBase`` (:mod:`pandemonium.attack.stages.base`) re-exports every name here.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pandemonium.errors import PandemoniumError

logger = logging.getLogger(__name__)

__all__ = [
    "KEY_SEPARATOR",
    "ROLES",
    "SEED_HIGH",
    "StageError",
    "call_log_vizualizations",
    "check_serialisable",
    "derive_seed",
    "params_from_lists",
    "params_to_lists",
    "role_of",
    "validate_batch",
]

SEED_HIGH = 2**53
"""Exclusive bound of the integer seeds stages store in their samples: below 2**53 an integer survives
float64 exactly, so an evaluation row re-renders even after a trip through a float column."""

ROLES = ("create", "implant", "augment", "model", "other")
"""What a stage does in a pipeline (``PipelineBase.role``). ``"implant"`` stages put the patch into
scenes: under ``control=True`` their output must not depend on the patch. ``Pipeline.find_stage(role)``
finds a stage by its role instead of its position."""


def role_of(stage: Any) -> str:
    """The declared role of a stage (instance or class): its ``role``, else ``"implant"`` when it has the
    older ``consumes_patch = True`` flag, else ``"other"`` (plain modules and foreign stages)."""
    role = getattr(stage, "role", None)
    if role in ROLES:
        return str(role)
    return "implant" if getattr(stage, "consumes_patch", False) else "other"


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
    ``name_{i}_{j}``. The inverse needs the layout: :func:`params_from_lists`.
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



def params_from_lists(
    given: Mapping[str, Any], layout: Mapping[str, Tensor], batch: int, stage_name: str = "stage"
) -> dict[str, Tensor]:
    """The inverse of :func:`params_to_lists`: 1-D columns back into tensors shaped, typed and placed
    like ``layout`` (what the stage's ``sample_params`` returns); unknown or missing keys name the stage."""
    expected_flat = params_to_lists(layout, stage_name) if layout else {}
    unknown = sorted(set(given) - set(expected_flat))
    if unknown:
        raise StageError(f"stage {stage_name!r}: unknown params keys {unknown}; expected {sorted(expected_flat)}")
    result: dict[str, Tensor] = {}
    for name, template in layout.items():
        trailing = tuple(template.shape[1:])
        columns = []
        for index in np.ndindex(*trailing) if trailing else [()]:
            flat_key = name + "".join(f"_{i}" for i in index)
            if flat_key not in given:
                raise StageError(
                    f"stage {stage_name!r}: params is missing key {flat_key!r} (expected a list / 1-D "
                    f"array of length {batch})"
                )
            value = given[flat_key]
            column = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
            if column.dim() != 1 or column.shape[0] != batch:
                raise StageError(
                    f"stage {stage_name!r}: params[{flat_key!r}] has shape {tuple(column.shape)}; "
                    f"expected a list / 1-D array of length {batch}"
                )
            columns.append(column.to(device=template.device, dtype=template.dtype))
        result[name] = columns[0] if not trailing else torch.stack(columns, dim=1).reshape(batch, *trailing)
    return result


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


def validate_batch(stage_name: str, x: Any, keys: Sequence[str] | None = None) -> bool:
    """A stage's default ``validate``: ``x`` is a tensor or a dict holding ``keys``, with finite values;
    findings are logged naming the stage."""
    ok = True
    tensors = {"x": x} if isinstance(x, Tensor) else dict(x) if isinstance(x, Mapping) else None
    if tensors is None:
        logger.warning("%s: expected a tensor or a dict of tensors, got %s", stage_name, type(x).__name__)
        return False
    if isinstance(x, Mapping) and keys is not None:
        missing = [k for k in keys if k not in x]
        if missing:
            logger.warning("%s: keys %s missing from input (available: %s)", stage_name, missing, sorted(x))
            ok = False
    for key, value in tensors.items():
        if isinstance(value, Tensor) and value.is_floating_point() and value.device.type != "meta":
            if not bool(torch.isfinite(value).all()):
                logger.warning("%s: input %s contains NaN or inf", stage_name, key)
                ok = False
    if ok:
        logger.info("%s: input OK", stage_name)
    return ok
