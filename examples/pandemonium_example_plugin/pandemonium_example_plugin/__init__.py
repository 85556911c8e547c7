"""Example pandemonium plugin (entry point ``example`` in group ``pandemonium.plugins``).

The reference for plugin authors: a mode (``example_count``), a task creator (``example_stripes``), an
artifact key, and a whole new task type, ``depth_estimation``, with its own ``depth`` modality, creator,
head, training loss and metrics, attack loss, success metric, attack preset and pipeline stage
(see :mod:`pandemonium_example_plugin.depth`), all without a line changed in pandemonium.
"""

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
    """Called by pandemonium with its ``PluginRegistry``: record everything this plugin adds."""
    from pandemonium_example_plugin import depth

    registry.add_config_path(CONFIG_DIR)  # mode/, loss/, metrics/, attack/ folders
    registry.add_scheduler("example_count", "pandemonium_example_plugin.scheduler.ExampleCountScheduler")
    registry.add_task_creator(
        "example_stripes", create_stripes, task_type="classification", class_names=["horizontal", "vertical"],
        description="Horizontal vs vertical stripes (example plugin)", license="CC0",
    )
    registry.add_artifact_key(COUNTS_KEY, "{proj_path}/EXAMPLE_COUNTS/{task_name}/{file_name}")
    # a task type: its modality (with how it follows augmentations), the spec, a creator, a stage
    registry.add_modality("DEPTH", depth.DEPTH, loader_cls=depth.DepthLoader, verifier=depth.verify_depth,
                          geometry="dense")
    registry.add_task_type(depth.DEPTH_SPEC)
    registry.add_task_creator(
        "example_depth", depth.create_depth_scenes, task_type=depth.TASK_TYPE,
        description="Boxes in front of a floor, per-pixel depth (example plugin)", license="CC0",
    )
    registry.add_stage("pandemonium_example_plugin.stages.ExampleDesaturate")
