"""TensorBoard helpers: one ``SummaryWriter`` per fit beside the MLflow database, and small
functions that write the trainer's scalars, histograms and images.

>>> writer = make_writer("/tmp/results", "patch-fit")  # doctest: +SKIP
>>> log_scalars(writer, {"loss/total": 0.3}, step=10)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["log_before_after", "log_histograms", "log_patch", "log_scalars", "make_writer", "tensorboard_dir"]

log = logging.getLogger(__name__)


def tensorboard_dir(out_dir: str | Path, run_name: str) -> Path:
    """``<out_dir>/tensorboard/<run_name>``: event files sit beside ``mlflow.db`` in the results folder."""
    return Path(out_dir) / "tensorboard" / run_name


def make_writer(out_dir: str | Path, run_name: str, purge_step: int | None = None) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` in :func:`tensorboard_dir`; ``purge_step`` drops
    events a killed run wrote after its last checkpoint (used when resuming)."""
    from torch.utils.tensorboard import SummaryWriter

    path = tensorboard_dir(out_dir, run_name)
    path.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(path), purge_step=purge_step)


def log_scalars(writer: Any, values: Mapping[str, float], step: int) -> None:
    for key, value in values.items():
        writer.add_scalar(key, float(value), global_step=step)


def log_histograms(writer: Any, columns: Mapping[str, Any], step: int, prefix: str = "eval_hist/") -> None:
    """One histogram per per-sample column (NaNs, e.g. undefined success, are left out)."""
    for key, values in columns.items():
        arr = np.asarray(values, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        if arr.size:
            writer.add_histogram(prefix + key, arr, global_step=step)


def log_patch(writer: Any, tag: str, patch: Any, step: int) -> None:
    """A (C, h, w) patch (or a dict of them) as image(s)."""
    if isinstance(patch, Mapping):
        for key, value in patch.items():
            log_patch(writer, f"{tag}/{key}", value, step)
        return
    img = patch.detach().cpu().float().clamp(0, 1)
    writer.add_image(tag, img, global_step=step, dataformats="CHW")


def log_before_after(writer: Any, images: Mapping[str, torch.Tensor], step: int, tag: str = "eval/before_after") -> None:
    """Control (top row) and patched (bottom row) inputs of the model, side by side per sample."""
    control, patched = images.get("control"), images.get("patched")
    if not isinstance(control, torch.Tensor) or not isinstance(patched, torch.Tensor) or control.ndim != 4:
        return
    grid = torch.cat([control, patched], dim=0).float().clamp(0, 1)
    if grid.shape[1] not in (1, 3):
        grid = grid[:, :3]
    writer.add_images(tag, grid, global_step=step, dataformats="NCHW")
