"""One converter to plain data (what JSON, YAML, MLflow params and ``weights_only`` loads accept)."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

__all__ = ["as_float", "to_plain"]


def to_plain(value: Any) -> Any:
    """``value`` as plain dicts, lists, str, int, float, bool and None.

    OmegaConf containers are resolved, paths become strings, enums their value, one-element tensors and
    numpy scalars a number, larger arrays nested lists, dataclasses dicts. JSON has no NaN, so a non-finite
    float becomes ``None``; anything else unknown becomes its ``str``.

    >>> to_plain({"p": PurePath("a/b"), "x": float("nan"), "t": (1, 2)})
    {'p': 'a/b', 'x': None, 't': [1, 2]}
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return to_plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if _is_omegaconf(value):
        from omegaconf import OmegaConf

        return to_plain(OmegaConf.to_container(value, resolve=True))
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(dataclasses.asdict(value))
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # torch tensors, numpy arrays and scalars
        return to_plain(value.tolist())
    if hasattr(value, "item"):
        try:
            return to_plain(value.item())
        except (ValueError, TypeError):
            pass
    return str(value)


def _is_omegaconf(value: Any) -> bool:
    module = type(value).__module__
    return module.startswith("omegaconf")


def as_float(value: Any) -> float:
    """A stored number as float; JSON ``null`` (an undefined rate, e.g. nothing to attack) is NaN."""
    return float("nan") if value is None else float(value)
