"""CPU augmentations (albumentations) built from config, applied per sample in :class:`TaskDataset`.

Config (``configs/augmentations/*.yaml``)::

    normalize: false          # true: the datamodule standardises images with the task's mean/std
    cpu:                      # albumentations transforms, each _target_ + kwargs, applied in order
      - _target_: albumentations.Affine
        translate_percent: [-0.05, 0.05]
        p: 0.5

Geometric transforms move every modality with the image by its geometry (:mod:`pandemonium.tasks.geometry`:
masks and dense maps by nearest neighbours, boxes as ``pascal_voc`` xyxy pixels clipped to the image,
boxes pushed out entirely dropped together with their labels).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pandemonium.build import BuildError, instantiate
from pandemonium.errors import ConfigError
from pandemonium.plain import to_plain
from pandemonium.tasks.attributes import Modality, TaskType
from pandemonium.tasks.geometry import albumentations_targets, apply_albumentations
from pandemonium.tasktypes import task_type_spec


class AugmentationConfigError(ConfigError, ValueError):
    """An entry of ``augmentations.cpu`` is not a ``_target_`` mapping."""


def normalize_flag(aug_cfg: Any) -> bool:
    """Whether the augmentation config asks the datamodule to standardise images (default: no)."""
    aug_cfg = to_plain(aug_cfg)
    return bool(aug_cfg.get("normalize", False)) if isinstance(aug_cfg, Mapping) else False


def build_cpu_augmentations(
    aug_cfg: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None,
    task_type: TaskType | str | None = None,
    seed: int | None = 0,
    modalities: Iterable[Modality | str] | None = None,
) -> Any | None:
    """An ``albumentations.Compose`` from ``aug_cfg["cpu"]`` (or a bare list of entries), or ``None``.

    Every modality in ``modalities`` (default: those the task type requires) follows the geometric
    transforms by its :class:`~pandemonium.tasks.attributes.Geometry`. ``seed`` seeds the Compose's own random state
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

    transforms = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "_target_" not in entry:
            raise AugmentationConfigError(f"augmentations.cpu[{k}] must be a mapping with _target_, got {entry!r}")
        try:
            transforms.append(instantiate(entry, what=f"augmentations.cpu[{k}] ({entry['_target_']})"))
        except BuildError as err:  # callers catch bad augmentation entries as ValueError
            raise AugmentationConfigError(str(err)) from None
    if modalities is None:
        modalities = task_type_spec(task_type).requires if task_type is not None else [Modality.IMAGE]
    return A.Compose(transforms, seed=seed, **albumentations_targets(modalities))


def apply_cpu_augmentations(transform: Any, raw: dict[Modality, Any]) -> dict[Modality, Any]:
    """Run ``transform`` on the raw (numpy) modalities of one sample; each follows by its geometry."""
    return apply_albumentations(transform, raw)
