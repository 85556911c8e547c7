"""Small generated inputs for the bring-your-own tests: photos, tables, COCO files, masks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def write_png(path: Path, value: int, size: tuple[int, int] = (24, 32), mode: str = "RGB") -> Path:
    """A PNG of ``size`` (H, W) with some texture around ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = size if mode in ("L", "P") else (*size, 3)
    array = np.clip(value + rng.integers(-20, 20, shape), 0, 255).astype(np.uint8)
    Image.fromarray(array, mode=None).convert(mode).save(path)
    return path


def compose(data_dir: Path, out_dir: Path, mode: str, *overrides: str) -> Any:
    from pandemonium.cli.main import compose_config

    return compose_config([f"mode={mode}", f"data_dir={data_dir}", f"out_dir={out_dir}",
                           "logging.mlflow.enabled=false", "logging.tensorboard.enabled=false", *overrides])


def run_mode(data_dir: Path, out_dir: Path, mode: str, *overrides: str) -> Any:
    """Run a mode in this process (as the CLI would, without a subprocess) and return its result."""
    from pandemonium.runs.base import build_scheduler

    return build_scheduler(compose(data_dir, out_dir, mode, *overrides)).run()


def leftovers(data_dir: Path) -> list[str]:
    """Anything in the tasks folder besides finished tasks and lock files: half-written data."""
    root = data_dir / "tasks"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock"))


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """``photos/<class>/<n>.png``: 2 classes x 6 images."""
    root = tmp_path / "photos"
    for k, name in enumerate(("cat", "dog")):
        for i in range(6):
            write_png(root / name / f"{i}.png", 60 + 120 * k + i)
    return root
