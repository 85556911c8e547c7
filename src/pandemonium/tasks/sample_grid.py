"""A PNG grid of a task's samples with their targets drawn on (class names, masks, boxes)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pandemonium.tasks.attributes import BOX_LABELS_KEY, Modality
from pandemonium.tasks.datamodule import TaskDataset, numpy_image
from pandemonium.tasks.struct import TaskStruct


def save_sample_grid(
    struct: TaskStruct,
    path: str | os.PathLike,
    n: int = 16,
    split: str = "all",
    seed: int = 0,
) -> Path:
    """Draw ``n`` samples (seeded choice from ``split``) into a grid and save it as PNG; returns ``path``."""
    from matplotlib.patches import Rectangle

    # drawing is the report layer's business: its pyplot (Agg backend) and figure writer
    from pandemonium.report.plots import pyplot, save_figure

    plt = pyplot()

    dataset = TaskDataset(struct, split)
    count = min(n, len(dataset))
    if count == 0:
        raise ValueError(f"task {struct.name!r}: split {split!r} is empty, nothing to draw")
    indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=count, replace=False))
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.2 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10")
    names = struct.class_names
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), indices):
        item = dataset[int(index)]
        ax.imshow(numpy_image(item[Modality.IMAGE.value]), cmap="gray", vmin=0, vmax=1)
        title = str(item[Modality.SAMPLE_ID.value])
        if Modality.CLASS.value in item:
            title = names[int(item[Modality.CLASS.value])]
        if Modality.CLASSES.value in item:
            hot = item[Modality.CLASSES.value].nonzero().flatten().tolist()
            title = ",".join(names[k] for k in hot) or "-"
        if Modality.VALUE.value in item:
            title = np.array2string(item[Modality.VALUE.value].numpy(), precision=2)
        if Modality.MASK.value in item:
            mask = item[Modality.MASK.value].numpy()
            for label in np.unique(mask):
                if label == 0:
                    continue
                # outline rather than fill, so the image under the mask stays visible
                ax.contour(mask == label, levels=[0.5], colors=[cmap(int(label) % 10)], linewidths=1.2)
            present = [names[k] for k in np.unique(mask) if 0 < k < len(names)]
            title = ",".join(present) or "background"
        if Modality.BOXES.value in item:
            for box, label in zip(item[Modality.BOXES.value].tolist(), item[BOX_LABELS_KEY].tolist()):
                x1, y1, x2, y2 = box
                colour = cmap(int(label) % 10)
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.2, ec=colour))
                ax.text(x1, y1 - 1, names[int(label)], color=colour, fontsize=6, va="bottom")
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"{struct.name} ({struct.task_type.value}, {len(dataset)} samples in {split})", fontsize=9)
    return save_figure(fig, path)
