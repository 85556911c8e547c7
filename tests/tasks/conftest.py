"""Tiny tasks shared by the tasks tests (created once per session; tests must not modify them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pandemonium.tasks import create_task, load_task_struct

#: creator kwargs that keep every built-in task tiny (a few hundred milliseconds each)
TINY = {
    "shapes_cls": {"num_samples": 40, "image_size": 32},
    "shapes_seg": {"num_samples": 30, "image_size": 32},
    "shapes_det": {"num_samples": 30, "image_size": 48},
    "digits": {"num_samples": 60, "image_size": 16},
}


def folder_digest(folder: Path) -> str:
    """Hash of every file's relative path and bytes below ``folder``."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding all four built-in tasks at tiny sizes (seed 0)."""
    data_dir = tmp_path_factory.mktemp("tiny_tasks")
    for name, kwargs in TINY.items():
        create_task(name, data_dir, seed=0, **kwargs)
    return data_dir


@pytest.fixture(scope="session")
def tiny_structs(tiny_data_dir: Path) -> dict:
    return {name: load_task_struct(name, tiny_data_dir) for name in TINY}
