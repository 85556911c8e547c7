"""pandemonium.tasks: what a task is (modalities, task types, ``TaskStruct``), how it lies on disk,
how it is created (creators, built-in offline tasks, importers), verified and loaded (datamodule).

>>> from pandemonium.tasks import create_task, load_task_struct, TaskDataModule  # doctest: +SKIP
>>> create_task("shapes_cls", data_dir, num_samples=200)                         # doctest: +SKIP
>>> struct = load_task_struct("shapes_cls", data_dir)                            # doctest: +SKIP
>>> dm = TaskDataModule(struct, fold=0, batch_size=16)                           # doctest: +SKIP

Public names load lazily (``import pandemonium.tasks.creators`` does not pull in Lightning), so
command-line paths that only list or create tasks stay fast.
"""

from __future__ import annotations

from pandemonium._lazy import lazy_exports

# public name -> module that defines it

_EXPORTS = {
    "BOX_LABELS_KEY": "pandemonium.tasks.attributes",
    "DEFAULT_LOADERS": "pandemonium.tasks.loaders",
    "DSET_CREATORS": "pandemonium.tasks.creators",
    "KORNIA_VALID_MODALITIES": "pandemonium.tasks.attributes",
    "MODALITY_VERIFIER_MAP": "pandemonium.tasks.verifiers",
    "Modality": "pandemonium.tasks.attributes",
    "ModalityLoader": "pandemonium.tasks.loaders",
    "TASK_CREATORS": "pandemonium.tasks.creators",
    "TASK_TYPE_REQUIREMENTS": "pandemonium.tasks.attributes",
    "TASK_TYPE_TARGETS": "pandemonium.tasks.attributes",
    "TMP_PREFIX": "pandemonium.tasks.format",
    "TaskCreationError": "pandemonium.tasks.errors",
    "TaskDataModule": "pandemonium.tasks.datamodule",
    "TaskDataset": "pandemonium.tasks.datamodule",
    "TaskError": "pandemonium.tasks.errors",
    "TaskFileError": "pandemonium.tasks.errors",
    "TaskFormatError": "pandemonium.tasks.errors",
    "TaskNameError": "pandemonium.tasks.errors",
    "TaskNotFoundError": "pandemonium.tasks.errors",
    "TaskStruct": "pandemonium.tasks.struct",
    "TaskType": "pandemonium.tasks.attributes",
    "TaskVerificationError": "pandemonium.tasks.errors",
    "TaskWriter": "pandemonium.tasks.format",
    "apply_cpu_augmentations": "pandemonium.tasks.augmentations",
    "build_cpu_augmentations": "pandemonium.tasks.augmentations",
    "build_loaders": "pandemonium.tasks.loaders",
    "collate_samples": "pandemonium.tasks.datamodule",
    "create_task": "pandemonium.tasks.creators",
    "list_creatable": "pandemonium.tasks.creators",
    "list_tasks": "pandemonium.tasks.creators",
    "load_task_struct": "pandemonium.tasks.creators",
    "register_dsetcreator": "pandemonium.tasks.creators",
    "register_modality": "pandemonium.tasks.attributes",
    "register_modality_loader": "pandemonium.tasks.loaders",
    "register_task_type": "pandemonium.tasks.attributes",
    "register_taskcreator": "pandemonium.tasks.creators",
    "save_sample_grid": "pandemonium.tasks.sample_grid",
    "task_path": "pandemonium.tasks.format",
    "validate_task_name": "pandemonium.tasks.format",
    "verify_task": "pandemonium.tasks.verifiers",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
