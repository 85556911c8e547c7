"""Moving every modality of a sample with its image, by the modality's :class:`Geometry`.

Both augmentation paths ask this module: albumentations on the CPU (per sample, in the datamodule)
and Kornia on the device (per batch, in the Lightning module). A modality registered with a geometry
(``register_modality("DEPTH", "depth", geometry=Geometry.DENSE)``) follows every geometric transform
on both paths with no further code; photometric transforms touch only the image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from pandemonium.errors import ConfigError
from pandemonium.tasks.attributes import (
    BOX_LABELS_KEY,
    KORNIA_DATA_KEYS,
    Geometry,
    Modality,
    modality_geometry,
)

__all__ = ["GeometryError", "albumentations_targets", "apply_albumentations", "apply_kornia", "moving_modalities"]


class GeometryError(ConfigError):
    """A sample's modalities cannot all follow the transform (e.g. two box modalities in one sample)."""


def moving_modalities(modalities: Iterable[Modality | str]) -> dict[Modality, Geometry]:
    """The modalities among ``modalities`` that move with the image, with their geometry (image first)."""
    found = {Modality(m): modality_geometry(m) for m in modalities}
    moving = {m: g for m, g in found.items() if g is not Geometry.NONE}
    for geometry in (Geometry.BOXES, Geometry.POINTS):
        several = [m.value for m, g in moving.items() if g is geometry]
        if len(several) > 1:
            raise GeometryError(f"modalities {several} all have {geometry.value} geometry; a sample may carry one")
    return dict(sorted(moving.items(), key=lambda kv: kv[1] is not Geometry.IMAGE))


def _target_key(modality: Modality, geometry: Geometry) -> str:
    """albumentations keyword of a modality (its own name unless it is one of the library's built-ins)."""
    builtin = {Modality.IMAGE: "image", Modality.MASK: "mask"}
    if modality in builtin:
        return builtin[modality]
    return {Geometry.BOXES: "bboxes", Geometry.POINTS: "keypoints"}.get(geometry, modality.value)


def albumentations_targets(modalities: Iterable[Modality | str]) -> dict[str, Any]:
    """``albumentations.Compose`` kwargs (``additional_targets``, ``bbox_params``, ``keypoint_params``)
    that make every moving modality among ``modalities`` follow the transforms."""
    import albumentations as A

    moving = moving_modalities(modalities)
    kwargs: dict[str, Any] = {"additional_targets": {}}
    for modality, geometry in moving.items():
        if geometry in (Geometry.DENSE, Geometry.LABEL_MAP) and modality is not Modality.MASK:
            # "mask" targets get geometric transforms only, resampled by nearest neighbours
            kwargs["additional_targets"][_target_key(modality, geometry)] = "mask"
        elif geometry is Geometry.IMAGE and modality is not Modality.IMAGE:
            kwargs["additional_targets"][_target_key(modality, geometry)] = "image"
        elif geometry is Geometry.BOXES:
            kwargs["bbox_params"] = A.BboxParams(format="pascal_voc", label_fields=[BOX_LABELS_KEY], clip=True,
                                                 min_area=1.0)
        elif geometry is Geometry.POINTS:
            kwargs["keypoint_params"] = A.KeypointParams(format="xy", remove_invisible=False)
    return kwargs


def apply_albumentations(transform: Any, raw: Mapping[Modality, Any]) -> dict[Modality, Any]:
    """Run an ``albumentations.Compose`` on the raw (numpy) modalities of one sample; each moving modality
    follows the transform by its geometry, the others pass through unchanged."""
    moving = moving_modalities(raw)
    known = {"image", "mask", "bboxes", "keypoints", *(getattr(transform, "additional_targets", None) or {})}
    kwargs: dict[str, Any] = {}
    for modality, geometry in moving.items():
        key = _target_key(modality, geometry)
        if key not in known:
            raise GeometryError(
                f"modality {modality.value!r} ({geometry.value} geometry) is not a target of the CPU augmentation; "
                "build it with build_cpu_augmentations(..., modalities=struct.modalities)"
            )
        if geometry is Geometry.BOXES:
            boxes, labels = raw[modality]
            kwargs[key] = np.asarray(boxes, np.float32).reshape(-1, 4)
            kwargs[BOX_LABELS_KEY] = np.asarray(labels, np.int64)
        elif geometry is Geometry.POINTS:
            kwargs[key] = np.asarray(raw[modality], np.float32).reshape(-1, 2)
        else:
            kwargs[key] = raw[modality]
    out = transform(**kwargs)
    result = dict(raw)
    for modality, geometry in moving.items():
        value = out[_target_key(modality, geometry)]
        if geometry is Geometry.IMAGE:
            image = np.asarray(value, np.float32)
            result[modality] = image[:, :, None] if image.ndim == 2 else image
        elif geometry is Geometry.LABEL_MAP:
            result[modality] = np.asarray(value, np.int64)
        elif geometry is Geometry.DENSE:
            result[modality] = np.asarray(value, dtype=np.asarray(raw[modality]).dtype)
        elif geometry is Geometry.BOXES:
            result[modality] = (np.asarray(value, np.float32).reshape(-1, 4),
                                np.asarray(out[BOX_LABELS_KEY], np.int64).reshape(-1))
        else:
            result[modality] = np.asarray(value, np.float32).reshape(-1, 2)
    return result


def _pad(items: list[Any], width: int, device: Any) -> tuple[Any, list[int]]:
    import torch

    counts = [len(b) for b in items]
    padded = torch.zeros(len(items), max(max(counts, default=0), 1), width, device=device)
    for i, b in enumerate(items):
        padded[i, : len(b)] = b
    return padded, counts


def apply_kornia(augmentation: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a Kornia ``AugmentationSequential`` to a collated batch; every modality in the batch moves by
    its geometry.

    Images go through as ``input`` (geometric and photometric transforms); label maps and dense maps as
    ``mask`` (geometric only, nearest neighbours); boxes (a list of ``(N_i, 4)`` tensors) and points (a
    list of ``(N_i, 2)`` tensors) are padded for Kornia and cut back afterwards. Boxes are clipped to the
    image, and boxes that left it are dropped together with their labels.
    """
    import torch

    present = [Modality(k) for k in batch if k in Modality._value2member_map_]
    moving = moving_modalities(present)
    if Modality.IMAGE not in moving:
        return dict(batch)
    inputs: list[Any] = []
    keys: list[str] = []
    counts: dict[Modality, list[int]] = {}
    device = batch[Modality.IMAGE.value].device
    for modality, geometry in moving.items():
        value = batch[modality.value]
        if geometry in (Geometry.BOXES, Geometry.POINTS):
            value, counts[modality] = _pad(list(value), 4 if geometry is Geometry.BOXES else 2, device)
        elif geometry in (Geometry.DENSE, Geometry.LABEL_MAP) and value.dim() == 3:
            value = value.unsqueeze(1)
        inputs.append(value.float() if geometry is not Geometry.IMAGE else value)
        keys.append(KORNIA_DATA_KEYS[geometry])
    out = augmentation(*inputs, data_keys=keys)
    out = out if isinstance(out, list | tuple) else [out]
    result = dict(batch)
    h, w = out[0].shape[-2:]
    for value, (modality, geometry) in zip(out, moving.items()):
        original = batch[modality.value]
        if geometry is Geometry.IMAGE:
            result[modality.value] = value.clamp(0, 1) if modality is Modality.IMAGE else value
        elif geometry in (Geometry.DENSE, Geometry.LABEL_MAP):
            value = value.squeeze(1) if original.dim() == 3 else value
            result[modality.value] = value.round().long() if geometry is Geometry.LABEL_MAP else value.to(original.dtype)
        elif geometry is Geometry.POINTS:
            result[modality.value] = [value[i, :c].clone() for i, c in enumerate(counts[modality])]
        else:
            labels = batch.get(BOX_LABELS_KEY) or [torch.zeros(c, dtype=torch.long) for c in counts[modality]]
            new_boxes, new_labels = [], []
            for i, c in enumerate(counts[modality]):
                b = value[i, :c].clone()
                b[:, 0::2] = b[:, 0::2].clamp(0, w)
                b[:, 1::2] = b[:, 1::2].clamp(0, h)
                keep = ((b[:, 2] - b[:, 0]) > 1) & ((b[:, 3] - b[:, 1]) > 1)
                new_boxes.append(b[keep])
                new_labels.append(labels[i][keep.to(labels[i].device)])
            result[modality.value] = new_boxes
            result[BOX_LABELS_KEY] = new_labels
    return result
