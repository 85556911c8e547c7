"""pandemonium: physical adversarial patch research across vision tasks.

Heavy submodules (torch, kornia, mlflow) load lazily, so ``pandemonium --help`` stays fast.

>>> from pandemonium import PipelineBase, Pipeline, AbstractBaseScheduler  # doctest: +SKIP
"""

from __future__ import annotations

from pandemonium._lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "PipelineBase": "pandemonium.attack.stages.base",
    "Pipeline": "pandemonium.attack.pipeline",
    "PatchTrainer": "pandemonium.attack.training.trainer",
    "AbstractBaseScheduler": "pandemonium.runs.base",
    "FileManager": "pandemonium.runs.file_manager",
    "TaskStruct": "pandemonium.tasks.struct",
    "Modality": "pandemonium.tasks.attributes",
    "TaskType": "pandemonium.tasks.attributes",
    "register_taskcreator": "pandemonium.tasks.creators",
    "register_dsetcreator": "pandemonium.tasks.creators",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
