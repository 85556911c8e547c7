"""``digits``: scikit-learn's 8x8 handwritten digits (shipped with sklearn, no download), upsampled."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pandemonium.tasks.attributes import TaskType
from pandemonium.tasks.builtin._progress import progress
from pandemonium.tasks.creators import register_taskcreator
from pandemonium.tasks.format import TaskWriter


@register_taskcreator(
    "digits", task_type=TaskType.CLASSIFICATION, class_names=[str(d) for d in range(10)],
    description="Handwritten digits 0-9 (scikit-learn load_digits, UCI optical recognition of "
                "handwritten digits), 8x8 grey upsampled bicubically.",
    license="CC BY 4.0 (UCI Machine Learning Repository)",
    keywords=("digits", "grey", "classification"),
)
def create_digits(writer: TaskWriter, rng: np.random.Generator, num_samples: int | None = None,
                  image_size: int = 32) -> None:
    """All 1797 digits by default; ``num_samples`` draws a seeded subset."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images, targets = data.images, data.target
    indices = np.arange(len(images))
    if num_samples is not None and num_samples < len(images):
        indices = np.sort(rng.choice(len(images), size=int(num_samples), replace=False))
    # values are 0..16 ink levels
    pixels = np.clip(np.rint(images[indices] * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    for sample, target in progress(zip(pixels, targets[indices]), "digits", total=len(indices)):
        upsampled = Image.fromarray(sample).resize((image_size, image_size), Image.BICUBIC)
        writer.add_sample(image=np.asarray(upsampled), cls=int(target))
