"""Example pandemonium plugin (entry point ``example`` in group ``pandemonium.plugins``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__version__ = "0.1.0"

CONFIG_DIR = Path(__file__).parent / "configs"
COUNTS_KEY = "example_counts"


def create_stripes(writer: Any, rng: np.random.Generator, num_samples: int = 24, image_size: int = 16) -> None:
    """Class 0: horizontal stripes, class 1: vertical stripes, random phase and colour."""
    for index in range(num_samples):
        label = index % 2
        period = int(rng.integers(2, 5))
        line = (np.arange(image_size) // period) % 2
        pattern = line[:, None] if label == 0 else line[None, :]
        pattern = np.broadcast_to(pattern, (image_size, image_size)).astype(np.float32)
        colour = rng.random(3).astype(np.float32)
        image = (pattern[..., None] * colour[None, None, :] * 255).astype(np.uint8)
        writer.add_sample(image=image, cls=label)


def register(registry: Any) -> None:
    """Called by pandemonium with its ``PluginRegistry``."""
    registry.add_config_path(CONFIG_DIR)
    registry.add_scheduler("example_count", "pandemonium_example_plugin.scheduler.ExampleCountScheduler")
    registry.add_task_creator(
        "example_stripes", create_stripes, task_type="classification", class_names=["horizontal", "vertical"],
        description="Horizontal vs vertical stripes (example plugin)", license="CC0",
    )
    registry.add_artifact_key(COUNTS_KEY, "{proj_path}/EXAMPLE_COUNTS/{task_name}/{file_name}")
