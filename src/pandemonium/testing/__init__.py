"""Helpers for testing pandemonium extensions.

``check_stage(stage, x)`` asserts the whole stage contract in one call; the pytest fixtures
(``pandemonium_roots``, ``fake_task``, …) are registered automatically through the ``pytest11``
entry point when pandemonium is installed.
"""

from __future__ import annotations

from pandemonium._lazy import lazy_exports

_EXPORTS = {
    "check_stage": "pandemonium.testing.stages",
    "check_loss": "pandemonium.testing.losses",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
