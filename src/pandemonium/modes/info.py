"""``pandemonium info``: the tasks of ``task_list`` (size, classes, splits), a sample grid per task and
the artifacts stored for each task in the project.

``task_list=[]`` lists every task on disk plus the creatable ones. ``run()`` returns
``{task: {"type", "samples", "image_size", "classes", "folds", "test", "grid", "artifacts"}}``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pandemonium.runs.base import AbstractBaseScheduler


class InfoScheduler(AbstractBaseScheduler):
    """Subroutines: ``tasks`` (table), ``grids`` (sample grid PNG per task), ``artifacts`` (stored files)."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["tasks", "grids", "artifacts"])
        self.summary: dict[str, dict[str, Any]] = {}

    def info_tasks(self) -> list[str]:
        return list(self.task_list) if self.task_list else self.known_tasks()

    def create_routine(self) -> None:
        for subroutine, command in (("tasks", self.describe_task), ("grids", self.save_grid),
                                    ("artifacts", self.list_stored)):
            if subroutine in self.subroutines:
                for task in self.info_tasks():
                    self.commands.append(command)
                    self.params.append([task])

    def _entry(self, task_name: str) -> dict[str, Any]:
        return self.summary.setdefault(task_name, {})

    def describe_task(self, task_name: str) -> dict[str, Any]:
        struct = self.get_struct(task_name)
        row = {
            "type": struct.task_type.value,
            "samples": struct.num_samples,
            "image_size": list(struct.image_size),
            "channels": struct.channels,
            "classes": list(struct.class_names),
            "folds": struct.num_folds,
            "test": struct.num_test,
        }
        self._entry(task_name).update(row)
        return row

    def save_grid(self, task_name: str) -> str:
        from pandemonium.tasks.sample_grid import save_sample_grid

        struct = self.get_struct(task_name)
        path = self.fm.construct_saving_path(obj=None, key="sample_grids", task_name=task_name,
                                             file_name="sample_grid.png")
        save_sample_grid(struct, path)
        self._entry(task_name)["grid"] = str(path)
        return str(path)

    def list_stored(self, task_name: str) -> dict[str, list[str]]:
        stored: dict[str, list[str]] = {}
        for key in self.fm.iter_keys():
            if key == "sample_grids":
                continue
            files = self.fm.list_artifacts(key, task_name)
            if files:
                stored[key] = [str(p) for p in files]
        self._entry(task_name)["artifacts"] = stored
        return stored

    def finish(self) -> dict[str, dict[str, Any]]:
        from rich.console import Console
        from rich.table import Table

        # wide when piped (logs, CI) so rows are not wrapped into unreadable columns
        console = Console(width=None if sys.stdout.isatty() else 200)
        table = Table(title=f"tasks in {self.cfg.data_dir}")
        for column in ("task", "type", "samples", "size", "classes", "folds / test", "stored artifacts"):
            table.add_column(column)
        for task, entry in self.summary.items():
            classes = entry.get("classes", [])
            shown = ", ".join(classes[:6]) + (f" … ({len(classes)})" if len(classes) > 6 else "")
            stored = entry.get("artifacts")
            table.add_row(
                task,
                str(entry.get("type", "")),
                str(entry.get("samples", "")),
                "x".join(map(str, entry.get("image_size", []))),
                shown,
                f"{entry.get('folds', '')} / {entry.get('test', '')}",
                ", ".join(f"{k}: {len(v)}" for k, v in stored.items()) if stored else "-",
            )
        console.print(table)
        grids = [e["grid"] for e in self.summary.values() if e.get("grid")]
        if grids:
            console.print(f"sample grids: {Path(grids[0]).parent.parent}")
        if not self.task_list:
            from pandemonium.tasks.creators import list_creatable

            missing = sorted(set(list_creatable()) - set(self.summary))
            if missing:
                console.print(f"creatable with `pandemonium create task_list=[...]`: {', '.join(missing)}")
        return self.summary
