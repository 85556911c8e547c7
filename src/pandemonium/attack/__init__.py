"""pandemonium.attack: stages, ``Pipeline``, patch parameterisations, losses and ``PatchTrainer``.

Names load lazily from the module that defines them (listed in its ``__all__``), so
``from pandemonium.attack import RandomScroll`` imports only what it needs, and a stage added to one
of these modules is exported without an edit here.
"""

from __future__ import annotations

import importlib
from typing import Any

# searched in this order; cheap modules first so common names do not import kornia or mlflow
_MODULES = (
    "pandemonium.attack.stages.contract",
    "pandemonium.attack.stages.base",
    "pandemonium.attack.pipeline",
    "pandemonium.attack.stages.registry",
    "pandemonium.attack.stages.model",
    "pandemonium.attack.patches",
    "pandemonium.attack.stages.create",
    "pandemonium.attack.stages.frequency",
    "pandemonium.attack.stages.softproof",
    "pandemonium.attack.losses",
    "pandemonium.attack.stages.bank_sources",
    "pandemonium.attack.stages.banks",
    "pandemonium.attack.stages.implant_args",
    "pandemonium.attack.stages.implant_base",
    "pandemonium.attack.stages.implant",
    "pandemonium.attack.stages.fused",
    "pandemonium.attack.stages.augment",
    "pandemonium.attack.optimizers",
    "pandemonium.attack.schedules",
    "pandemonium.attack.evaluation",
    "pandemonium.attack.training",
    "pandemonium.attack.analysis",
)


def __getattr__(name: str) -> Any:
    if name == "__all__":  # computed on demand: listing every name imports every module
        return __dir__()
    if name.startswith("__"):
        raise AttributeError(name)
    for module_name in _MODULES:
        module = importlib.import_module(module_name)
        if name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module 'pandemonium.attack' has no attribute {name!r}")


def __dir__() -> list[str]:
    names: set[str] = set()
    for module_name in _MODULES:
        names.update(getattr(importlib.import_module(module_name), "__all__", ()))
    return sorted(names)
