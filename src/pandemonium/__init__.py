"""pandemonium: physical adversarial patch research across vision tasks.

Heavy submodules (torch, kornia, mlflow) load lazily, so ``pandemonium --help`` stays fast.

>>> from pandemonium import PipelineBase, Pipeline, AbstractBaseScheduler  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "PipelineBase": "pandemonium.pipeline.base",
    "Pipeline": "pandemonium.pipeline.pipeline",
    "PatchTrainer": "pandemonium.pipeline.trainer",
    "AbstractBaseScheduler": "pandemonium.schedulers.base",
    "FileManager": "pandemonium.tracking.file_manager",
    "TaskStruct": "pandemonium.tasks.struct",
    "Modality": "pandemonium.tasks.attributes",
    "TaskType": "pandemonium.tasks.attributes",
    "register_taskcreator": "pandemonium.tasks.creators",
    "register_dsetcreator": "pandemonium.tasks.creators",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pandemonium' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
