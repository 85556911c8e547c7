"""``pandemonium import``: bring a folder, table or COCO file of your own images in as a task.

    pandemonium import task=my_photos from=folder root=/data/photos
    pandemonium import task=signs from=csv root=/data/signs/boxes.csv image_size=64
    pandemonium import task=cars from=coco root=/data/cars/annotations.json
    pandemonium import task=roads from=masks root=/data/roads options.class_names=[road,car]

``from`` picks the importer of :mod:`pandemonium.tasks.builtin.importers` (``folder``, ``csv``,
``coco``, ``masks``, or any registered importer's full name), ``root`` is its source, ``options`` holds
its other arguments. The task is written with seeded folds (``seed``) under ``<data_dir>/tasks/<task>``;
nothing is left there when an input is bad. ``run()`` returns ``{"task", "path", "samples", "classes"}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from pandemonium.errors import ConfigError
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)

#: the argument of each importer that ``root=`` fills
SOURCE_ARGUMENT = {"import_folder": "root", "import_csv": "csv_path", "import_coco": "annotation_file",
                   "import_masks": "root"}


def importer_call(cfg: DictConfig) -> tuple[str, str, dict[str, Any]]:
    """``(task, importer name, importer kwargs)`` from the ``import`` mode's config; errors name the key."""
    from pandemonium.tasks.builtin.importers import IMPORTERS
    from pandemonium.tasks.creators import DSET_CREATORS, list_creatable

    task = cfg.get("task")
    if not task:
        raise ConfigError("import: give the new task's name, e.g. `pandemonium import task=my_photos from=folder root=DIR`")
    list_creatable()  # registers the built-in importers
    source = str(cfg.get("from") or "folder")
    importer = IMPORTERS.get(source, source)
    if importer not in DSET_CREATORS:
        raise ConfigError(f"import: from={source!r} is not an importer; use one of {sorted(IMPORTERS)} "
                          f"or {sorted(DSET_CREATORS)}")
    root = cfg.get("root")
    if not root:
        raise ConfigError(f"import: from={source} needs root=<the {SOURCE_ARGUMENT.get(importer, 'source')}>")
    options = OmegaConf.to_container(cfg.get("options") or {}, resolve=True)
    kwargs: dict[str, Any] = {SOURCE_ARGUMENT.get(importer, "root"): str(Path(str(root)).expanduser().absolute())}
    if cfg.get("image_size") is not None:
        size = cfg.image_size
        kwargs["image_size"] = int(size) if isinstance(size, int) else [int(s) for s in size]
    workers = OmegaConf.select(cfg, "mode.workers", default=None)
    if workers is not None:
        kwargs["workers"] = int(workers)
    if importer == "import_csv" and options.get("image_root") is not None:  # type: ignore[union-attr]
        options["root"] = options.pop("image_root")  # type: ignore[union-attr]
    kwargs.update({k: v for k, v in options.items() if v is not None})  # type: ignore[union-attr]
    return str(task), importer, kwargs


class ImportScheduler(AbstractBaseScheduler):
    """One ``import_task`` step: run the importer into ``<data_dir>/tasks/<task>`` (atomically)."""

    requires_existing_tasks = False

    def __init__(self, cfg: DictConfig) -> None:
        task, self.importer, self.kwargs = importer_call(cfg)
        with open_dict(cfg):
            cfg.task_list = [task]  # the run journal and `info` see the task like any other
        super().__init__(cfg=cfg, available_subroutines=["import_task"])
        self.task = task
        self.force = bool(OmegaConf.select(cfg, "mode.force", default=False))
        self.summary: dict[str, Any] = {}

    def create_routine(self) -> None:
        if "import_task" in self.subroutines:
            self.commands.append(self.import_task)
            self.params.append([self.task])

    def import_task(self, task_name: str) -> dict[str, Any]:
        from pandemonium.tasks.creators import create_task, list_tasks, load_task_struct

        if task_name in list_tasks(self.cfg.data_dir) and not self.force:
            raise ConfigError(
                f"import: task {task_name!r} already exists in {self.cfg.data_dir}; choose another task= "
                "or replace it with mode.force=true"
            )
        path = create_task(task_name, self.cfg.data_dir, seed=int(self.cfg.seed), force=self.force,
                           creator=self.importer, **self.kwargs)
        struct = load_task_struct(task_name, self.cfg.data_dir)
        self.summary = {"task": task_name, "path": str(path), "samples": int(struct.num_samples),
                        "classes": list(struct.class_names), "task_type": str(struct.task_type.value)}
        log.info("imported task %s (%s, %d samples, classes %s) at %s", task_name, self.summary["task_type"],
                 self.summary["samples"], struct.class_names, path)
        return self.summary

    def finish(self) -> dict[str, Any]:
        return self.summary or self.last_result
