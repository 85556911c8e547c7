"""pandemonium.tracking: artifact paths (FileManager), MLflow/TensorBoard helpers, reports.

Submodules load lazily so importing ``pandemonium.tracking`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FileManager": "pandemonium.tracking.file_manager",
    "DEFAULT_ASSIGNMENTS": "pandemonium.tracking.file_manager",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pandemonium.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
