"""Tiny tasks for the models tests (created once per session; 32 px, a few dozen samples)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pandemonium.tasks.creators import create_task

    data_dir = tmp_path_factory.mktemp("models_data")
    create_task("shapes_cls", data_dir, seed=0, num_samples=60, image_size=32)
    create_task("shapes_det", data_dir, seed=0, num_samples=40, image_size=32)
    create_task("shapes_seg", data_dir, seed=0, num_samples=40, image_size=32)
    return data_dir


@pytest.fixture(scope="session")
def tiny_structs(tiny_data_dir: Path) -> dict:
    from pandemonium.tasks.creators import load_task_struct

    return {name: load_task_struct(name, tiny_data_dir) for name in ("shapes_cls", "shapes_det", "shapes_seg")}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The CI box and our dev machine share 2 cores between many jobs; one intra-op thread avoids the
    oversubscription that makes tiny models several times slower there."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
