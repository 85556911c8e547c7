"""pandemonium.pipeline: stages, ``Pipeline``, patch parameterisations and losses.

Heavy optional pieces are imported lazily: ``from pandemonium.pipeline import RandomScroll`` loads
only what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> defining module (core pipeline, owned by the pipeline-core engineer)
_EXPORTS: dict[str, str] = {
    "PipelineBase": "pandemonium.pipeline.base",
    "StageError": "pandemonium.pipeline.base",
    "derive_seed": "pandemonium.pipeline.base",
    "Pipeline": "pandemonium.pipeline.pipeline",
    "register_stage": "pandemonium.pipeline.registry",
    "resolve_stage_class": "pandemonium.pipeline.registry",
    "STAGE_REGISTRY": "pandemonium.pipeline.registry",
    "ModelStage": "pandemonium.pipeline.model",
    "DetectorOutputAdapter": "pandemonium.pipeline.model",
    "RawPatch": "pandemonium.pipeline.patches",
    "SigmoidPatch": "pandemonium.pipeline.patches",
    "TanhPatch": "pandemonium.pipeline.patches",
    "LowResPatch": "pandemonium.pipeline.patches",
    "Resize": "pandemonium.pipeline.create",
    "ChannelStack": "pandemonium.pipeline.create",
    "Tile": "pandemonium.pipeline.create",
    "RandomScroll": "pandemonium.pipeline.create",
    "ReflectPadTranslate": "pandemonium.pipeline.create",
    "HighPassFilter": "pandemonium.pipeline.create",
    "LowPassFilter": "pandemonium.pipeline.create",
    "SpectrumNoise": "pandemonium.pipeline.create",
    "SoftProof": "pandemonium.pipeline.create",
    "PatchLoss": "pandemonium.pipeline.losses",
    "CompositeLoss": "pandemonium.pipeline.losses",
    "weighted_total": "pandemonium.pipeline.losses",
}

# --- implant/augment/fused (owned by the implant engineer) ---
# Their public names are found by scanning these modules' ``__all__`` on first access, so adding a
# stage there needs no edit here; a missing or broken module only affects its own names.
_OPTIONAL_MODULES = (
    "pandemonium.pipeline.implant",
    "pandemonium.pipeline.augment",
    "pandemonium.pipeline.fused",
)

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    for optional in _OPTIONAL_MODULES:
        try:
            mod = importlib.import_module(optional)
        except ModuleNotFoundError as err:
            if err.name == optional:
                continue
            raise
        if name in getattr(mod, "__all__", ()):
            value = getattr(mod, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module 'pandemonium.pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
