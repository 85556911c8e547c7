"""Lazy public names for packages, so ``pandemonium --help`` does not import torch, kornia or mlflow."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for ``package`` whose names (``name -> defining module``)
    are imported on first access and then cached in the package namespace.

    >>> __all__, __getattr__, __dir__ = lazy_exports(__name__, {"TaskStruct": "pandemonium.tasks.struct"})
    """
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return list(names)

    return names, __getattr__, __dir__
