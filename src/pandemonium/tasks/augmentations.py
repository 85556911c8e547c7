"""CPU augmentations (albumentations) built from config, applied per sample in :class:`TaskDataset`.

Config (``configs/augmentations/*.yaml``)::

    normalize: false          # true: the datamodule standardises images with the task's mean/std
    cpu:                      # albumentations transforms, each _target_ + kwargs, applied in order
      - _target_: albumentations.Affine
        translate_percent: [-0.05, 0.05]
        p: 0.5

Geometric transforms move masks and boxes with the image (boxes as ``pascal_voc`` xyxy pixels,
clipped to the image; boxes pushed out entirely are dropped together with their labels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pandemonium.plain import to_plain
from pandemonium.tasks.attributes import Modality, TaskType


def normalize_flag(aug_cfg: Any) -> bool:
    """Whether the augmentation config asks the datamodule to standardise images (default: no)."""
    aug_cfg = to_plain(aug_cfg)
    return bool(aug_cfg.get("normalize", False)) if isinstance(aug_cfg, Mapping) else False


def build_cpu_augmentations(
    aug_cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    task_type: TaskType | str | None = None,
    seed: int | None = 0,
) -> Any | None:
    """An ``albumentations.Compose`` from ``aug_cfg["cpu"]`` (or a bare list of entries), or ``None``.

    ``task_type`` ``detection`` adds bbox handling. ``seed`` seeds the Compose's own random state
    (albumentations never reads global RNG state when seeded).

    >>> build_cpu_augmentations({"cpu": [{"_target_": "albumentations.HorizontalFlip", "p": 0.5}]})
    ... # doctest: +ELLIPSIS
    Compose(...
    """
    aug_cfg = to_plain(aug_cfg)
    if aug_cfg is None:
        return None
    entries = aug_cfg.get("cpu", []) if isinstance(aug_cfg, Mapping) else aug_cfg
    if not entries:
        return None
    import albumentations as A
    from hydra.utils import instantiate

    transforms = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise ValueError(f"augmentations.cpu[{k}] must be a mapping with _target_, got {entry!r}")
        try:
            transforms.append(instantiate(entry))
        except Exception as err:  # hydra's InstantiationException buries the cause; name the entry
            raise ValueError(f"augmentations.cpu[{k}] ({entry['_target_']}): cannot build: {err}") from None
    bbox_params = None
    if task_type is not None and TaskType(task_type) is TaskType.DETECTION:
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_area=1.0)
    return A.Compose(transforms, bbox_params=bbox_params, seed=seed)


def apply_cpu_augmentations(transform: Any, raw: dict[Modality, Any]) -> dict[Modality, Any]:
    """Run ``transform`` on the raw (numpy) modalities of one sample; other modalities pass through."""
    kwargs: dict[str, Any] = {"image": raw[Modality.IMAGE]}
    if Modality.MASK in raw:
        kwargs["mask"] = raw[Modality.MASK]
    if Modality.BOXES in raw:
        boxes, labels = raw[Modality.BOXES]
        kwargs["bboxes"] = np.asarray(boxes, np.float32).reshape(-1, 4)
        kwargs["labels"] = np.asarray(labels, np.int64)
    out = transform(**kwargs)
    result = dict(raw)
    image = np.asarray(out["image"], np.float32)
    result[Modality.IMAGE] = image[:, :, None] if image.ndim == 2 else image
    if Modality.MASK in raw:
        result[Modality.MASK] = np.asarray(out["mask"], np.int64)
    if Modality.BOXES in raw:
        result[Modality.BOXES] = (
            np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
            np.asarray(out["labels"], np.int64).reshape(-1),
        )
    return result
