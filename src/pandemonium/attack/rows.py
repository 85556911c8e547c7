"""Evaluation rows <-> stage params, and :func:`render_row`: any row re-renders exactly, alone.

An evaluation table stores, per row, every value the pipeline sampled for that row (``param:<key>``
columns, from ``pipeline.get_last_sample_as_dict()``) and the table's ``attrs["param_spec"]`` records
each key's type. :func:`rows_to_params` turns any subset of rows back into a ``params=`` dict, and
:func:`render_row` replays one row through the pipeline, giving bit for bit the image the model saw.

That works alone, for one row out of its batch, because every built-in stage samples per row:
noise fields come from per-row seeds, values Kornia draws once per batch are repeated in every row,
and integer seeds stay below 2**53 so that even a trip through float64 (``table.iloc[i]`` of an
all-numeric table) keeps them exact; :func:`rows_to_params` restores each column's own dtype.

Example:
    >>> table = load_table("eval_step_100.parquet")            # doctest: +SKIP
    >>> image = render_row(pipeline, patch, table.iloc[17])    # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from pandemonium.attack.stages.base import StageError

__all__ = [
    "PARAM_PREFIX",
    "expand_patch",
    "final_stage_input",
    "params_to_rows",
    "pipeline_stages",
    "render_row",
    "rows_to_params",
]

PARAM_PREFIX = "param:"
EXACT_FLOAT_INTEGER = 2**53
"""Integers up to this survive float64 exactly; seeds stored in rows are drawn below it."""


def _param_kind(value: Any) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        return {"kind": "tensor", "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, np.ndarray):
        return {"kind": "ndarray", "dtype": str(value.dtype)}
    return {"kind": "list"}


def _per_sample(value: Any, batch: int, key: str) -> list[Any]:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.ndim == 0 or value.shape[0] != batch:
            raise StageError(f"sampled param {key!r} has shape {value.shape}, expected length {batch} first")
        return list(value) if value.ndim == 1 else [v for v in value]
    value = list(value)
    if len(value) != batch:
        raise StageError(f"sampled param {key!r} has {len(value)} values, expected {batch} (the batch size)")
    return value


def _numpy_dtype(name: str) -> np.dtype:
    # torch dtype names and numpy dtype names coincide for the numeric types params use
    return np.dtype("bool" if name == "bool" else name)


def _exact_cast(values: list[Any], dtype: np.dtype, key: str) -> np.ndarray:
    """Stack ``values`` as ``dtype``; an integer that went through float64 must still be whole."""
    arr = np.stack([np.asarray(v) for v in values])
    if np.issubdtype(dtype, np.integer) and np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or np.any(np.abs(arr) > EXACT_FLOAT_INTEGER):
            raise StageError(
                f"param column {key!r} holds integers that went through floating point inexactly: read rows "
                "with table.iloc[[i]] (a one-row DataFrame keeps each column's dtype)"
            )
    return arr.astype(dtype, copy=False)


def _rebuild_param(key: str, values: list[Any], spec: Mapping[str, Any], device: torch.device | None) -> Any:
    kind = spec.get("kind", "list")
    if kind == "list":
        return [v.tolist() if isinstance(v, np.ndarray) else (v.item() if isinstance(v, np.generic) else v)
                for v in values]
    arr = _exact_cast(values, _numpy_dtype(spec["dtype"]), key)
    if kind == "ndarray":
        return arr
    return torch.as_tensor(arr, device=device)


def params_to_rows(params: Mapping[str, Any], batch: int) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Split a ``get_last_sample_as_dict()`` batch into per-row column values and a type spec."""
    cols: dict[str, list[Any]] = {}
    spec: dict[str, Any] = {}
    for key, value in params.items():
        cols[PARAM_PREFIX + key] = _per_sample(value, batch, key)
        spec[key] = _param_kind(value)
    return cols, spec


def rows_to_params(rows: pd.DataFrame | pd.Series, spec: Mapping[str, Any] | None = None,
                   device: torch.device | None = None) -> dict[str, Any]:
    """Rebuild a ``params=`` dict (batch of ``len(rows)``) from table rows, restoring each key's type."""
    if isinstance(rows, pd.Series):
        attrs = dict(rows.attrs)
        rows = rows.to_frame().T
        rows.attrs = attrs
    spec = dict(spec or rows.attrs.get("param_spec") or {})
    out: dict[str, Any] = {}
    for col in rows.columns:
        if not str(col).startswith(PARAM_PREFIX):
            continue
        key = str(col)[len(PARAM_PREFIX):]
        values = list(rows[col])
        if values and isinstance(values[0], str):  # CSV fallback stores per-row lists as JSON
            values = [_maybe_json(v) for v in values]
        out[key] = _rebuild_param(key, values, spec.get(key, {"kind": "list"}), device)
    return out


def _maybe_json(v: str) -> Any:
    if v.startswith(("[", "{")):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


# --------------------------------------------------------------------------------------- rendering
def pipeline_stages(pipeline: torch.nn.Module) -> list[torch.nn.Module]:
    """The ordered stages of a Pipeline (``.stages``) or, failing that, its child modules."""
    stages = getattr(pipeline, "stages", None)
    if stages is not None:
        return list(stages.values()) if isinstance(stages, Mapping) else list(stages)
    return list(pipeline.children())


class _StopForward(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__("stopped before the final stage")
        self.value = value


def final_stage_input(pipeline: torch.nn.Module, x: Any, **forward_kwargs: Any) -> Any:
    """Run ``pipeline(x, **forward_kwargs)`` up to its last stage (the model) and return that stage's
    input: the images the model sees. The model itself is not run."""
    stages = pipeline_stages(pipeline)
    if not stages:
        raise StageError("pipeline has no stages to stop before")

    def hook(_module: torch.nn.Module, args: tuple[Any, ...], _kwargs: dict[str, Any]) -> None:
        raise _StopForward(args[0] if args else _kwargs.get("x"))

    handle = stages[-1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipeline(x, **forward_kwargs)
    except _StopForward as stop:
        return stop.value
    finally:
        handle.remove()
    raise StageError("the pipeline's last stage was never called")


def expand_patch(patch: Any, batch: int) -> Any:
    """The patch (a ``(C, h, w)`` / ``(1, C, h, w)`` tensor, a patch module, or a dict of them) as a
    batch of ``batch`` views."""
    if isinstance(patch, torch.nn.Module):
        patch = patch()
    if isinstance(patch, Mapping):
        return {k: expand_patch(v, batch) for k, v in patch.items()}
    if patch.ndim == 3:
        patch = patch.unsqueeze(0)
    return patch.expand(batch, *patch.shape[1:])


@torch.no_grad()
def render_row(
    pipeline: torch.nn.Module,
    patch: Any,
    table_row: pd.Series | pd.DataFrame | Mapping[str, Any],
    control: bool = False,
) -> torch.Tensor:
    """Re-render one evaluation row exactly from its saved params: the image the model saw.

    Args:
        pipeline: the pipeline that produced the table.
        patch: the patch (a ``(C, h, w)`` tensor, a patch module, or a dict of them).
        table_row: one row of an evaluation table: ``table.iloc[i]`` or ``table.iloc[[i]]`` (with the
            table's ``attrs["param_spec"]``, as :func:`~pandemonium.attack.evaluation.load_table` sets).
        control: render the control image (no patch) instead of the patched one.

    Returns:
        the ``(1, C, H, W)`` input of the pipeline's last stage.
    """
    if isinstance(table_row, pd.DataFrame):
        if len(table_row) != 1:
            raise StageError(f"render_row renders one row; got a table of {len(table_row)} rows")
        frame = table_row
    else:
        if not isinstance(table_row, pd.Series):
            table_row = pd.Series(dict(table_row))
        frame = table_row.to_frame().T
        frame.attrs = dict(table_row.attrs)
    device = next((p.device for p in pipeline.parameters()), None)
    if device is None:
        device = next((b.device for b in pipeline.buffers()), torch.device("cpu"))
    params = rows_to_params(frame, device=device)
    return final_stage_input(pipeline, expand_patch(patch, 1), evaluate=True, control=control, params=params)
