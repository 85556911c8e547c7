"""Helpers for testing pandemonium extensions.

``check_stage(stage, x)`` asserts the whole stage contract in one call; the pytest fixtures
(``pandemonium_roots``, ``fake_task``, …) are registered automatically through the ``pytest11``
entry point when pandemonium is installed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "check_stage": "pandemonium.testing.stages",
    "check_loss": "pandemonium.testing.stages",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pandemonium.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
