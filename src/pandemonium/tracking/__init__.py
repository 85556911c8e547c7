"""pandemonium.tracking: artifact paths (FileManager), MLflow/TensorBoard helpers, reports.

Submodules load lazily so importing ``pandemonium.tracking`` stays cheap.
"""

from __future__ import annotations

from pandemonium._lazy import lazy_exports

_EXPORTS = {
    "FileManager": "pandemonium.tracking.file_manager",
    "DEFAULT_ASSIGNMENTS": "pandemonium.tracking.file_manager",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
