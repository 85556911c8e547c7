"""Plots and images for fits (matplotlib with the Agg backend: no display needed).

>>> save_patch_png(torch.rand(3, 16, 16), "/tmp/patch.png")  # doctest: +SKIP
>>> plot_history(result.history, "/tmp/loss.png")             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["plot_eval_history", "plot_history", "pyplot", "save_figure", "save_patch_png"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (parents created) and close it; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def save_patch_png(patch: torch.Tensor, path: str | Path) -> Path:
    """Write a (C, h, w) patch in [0, 1] as an 8-bit PNG (grey patches as greyscale)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = patch.detach().cpu().float().clamp(0, 1)
    arr = (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if arr.shape[2] == 1:
        arr = arr[:, :, 0]
    elif arr.shape[2] > 3:
        arr = arr[:, :, :3]
    Image.fromarray(arr).save(path)
    return path


def plot_history(history: Sequence[Mapping[str, float]], path: str | Path, keys: Sequence[str] | None = None) -> Path:
    """Training curves (one line per loss term) against the step."""
    plt = pyplot()
    keys = list(keys) if keys is not None else [k for k in (history[0] if history else {}) if k not in ("step", "lr")]
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [h["step"] for h in history]
    for key in keys:
        ax.plot(steps, [h.get(key, np.nan) for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss term (batch mean)")
    if keys:
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_eval_history(evals: Sequence[Mapping[str, float]], metric: str, path: str | Path) -> Path:
    """An evaluation metric against the step with its bootstrap confidence band."""
    plt = pyplot()
    steps = np.array([e["step"] for e in evals], dtype=float)
    mean = np.array([e.get(metric, np.nan) for e in evals], dtype=float)
    lo = np.array([e.get(f"{metric}_ci_low", np.nan) for e in evals], dtype=float)
    hi = np.array([e.get(f"{metric}_ci_high", np.nan) for e in evals], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, mean, marker="o", label=metric)
    ax.fill_between(steps, lo, hi, alpha=0.25, label="95% bootstrap CI")
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    return save_figure(fig, path)
