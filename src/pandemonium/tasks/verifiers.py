"""Per-modality sample checks (:data:`MODALITY_VERIFIER_MAP`) and :func:`verify_task`.

A verifier is ``fn(entry, ctx) -> None`` that raises ``ValueError`` with a short reason;
:func:`verify_task` turns it into a :class:`TaskVerificationError` naming task, sample and modality.
Plugins adding a modality add their verifier to the (plain dict) map::

    MODALITY_VERIFIER_MAP[Modality("depth")] = verify_depth
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pandemonium.tasks.attributes import Modality
from pandemonium.tasks.errors import TaskFileError, TaskFormatError, TaskVerificationError
from pandemonium.tasks.format import read_task_json, struct_from_meta
from pandemonium.tasks.struct import TaskStruct


@dataclass
class SampleContext:
    """What a verifier may consult about the task and the sample being checked."""

    struct: TaskStruct
    sample: dict[str, Any]
    deep: bool
    #: (H, W) of this sample's image, filled by the image verifier (which runs first).
    image_hw: tuple[int, int] | None = None

    @property
    def task_dir(self) -> Path:
        assert self.struct.task_dir is not None
        return self.struct.task_dir

    def file(self, entry: Any) -> Path:
        """Resolve a relative sample file; a missing file raises :class:`TaskFileError` naming it."""
        path = self.task_dir / str(entry)
        if not path.is_file():
            raise TaskFileError(
                f"task {self.struct.name!r}: sample {self.sample['id']!r} file {path} is missing"
            )
        return path


def _open(ctx: SampleContext, entry: Any) -> Image.Image:
    path = ctx.file(entry)
    try:
        image = Image.open(path)
        if ctx.deep:
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise TaskFileError(
            f"task {ctx.struct.name!r}: sample {ctx.sample['id']!r} cannot decode {path} ({err})"
        ) from None
    return image


def verify_image(entry: Any, ctx: SampleContext) -> None:
    """The file exists and decodes (deep); records its size for the mask/boxes checks."""
    with _open(ctx, entry) as image:
        ctx.image_hw = (image.size[1], image.size[0])
        channels = len(image.getbands())
    if channels != ctx.struct.channels and not (channels in (3, 4) and ctx.struct.channels == 3):
        raise ValueError(f"image has {channels} channels, task declares {ctx.struct.channels}")


def verify_mask(entry: Any, ctx: SampleContext) -> None:
    """Same H×W as the image, single channel, labels in ``[0, num_classes)`` (deep)."""
    with _open(ctx, entry) as image:
        hw = (image.size[1], image.size[0])
        if ctx.image_hw is not None and hw != ctx.image_hw:
            raise ValueError(f"mask is {hw[0]}x{hw[1]} but the image is {ctx.image_hw[0]}x{ctx.image_hw[1]}")
        if len(image.getbands()) != 1:
            raise ValueError(f"mask must be single-channel, has bands {image.getbands()}")
        if ctx.deep:
            array = np.asarray(image)
            if array.size and (array.min() < 0 or array.max() >= ctx.struct.num_classes):
                raise ValueError(
                    f"mask labels in [{array.min()}, {array.max()}] outside [0, {ctx.struct.num_classes})"
                )


def _check_label(label: Any, num_classes: int, what: str) -> None:
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise ValueError(f"{what} {label!r} is not an integer")
    if not 0 <= label < num_classes:
        raise ValueError(f"{what} {label} outside [0, {num_classes})")


def verify_class(entry: Any, ctx: SampleContext) -> None:
    """An integer in ``[0, num_classes)``."""
    _check_label(entry, ctx.struct.num_classes, "class label")


def verify_classes(entry: Any, ctx: SampleContext) -> None:
    """A multi-hot list of 0/1 of length ``num_classes``."""
    if not isinstance(entry, list) or len(entry) != ctx.struct.num_classes:
        length = len(entry) if isinstance(entry, list) else type(entry).__name__
        raise ValueError(f"multi-hot classes must be a list of length {ctx.struct.num_classes}, got {length}")
    if any(v not in (0, 1) or isinstance(v, float) for v in entry):
        raise ValueError(f"multi-hot classes must hold only 0 and 1, got {entry}")


def verify_boxes(entry: Any, ctx: SampleContext) -> None:
    """xyxy boxes with x1<x2, y1<y2, inside the image; one label in range per box."""
    if not isinstance(entry, dict) or "xyxy" not in entry or "labels" not in entry:
        raise ValueError('boxes entry must be {"xyxy": [[x1, y1, x2, y2], ...], "labels": [...]}')
    boxes, labels = entry["xyxy"], entry["labels"]
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    height, width = ctx.image_hw if ctx.image_hw is not None else ctx.struct.image_size
    for k, (box, label) in enumerate(zip(boxes, labels)):
        if len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
            raise ValueError(f"box {k} {box} is not 4 finite numbers")
        x1, y1, x2, y2 = box
        if not (x1 < x2 and y1 < y2):
            raise ValueError(f"box {k} {box} is empty or inverted (need x1<x2, y1<y2)")
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ValueError(f"box {k} {box} lies outside the {height}x{width} image")
        _check_label(label, ctx.struct.num_classes, f"box {k} label")


def verify_value(entry: Any, ctx: SampleContext) -> None:
    """A finite number or list of finite numbers."""
    values = entry if isinstance(entry, list) else [entry]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                             for v in values):
        raise ValueError(f"regression value {entry!r} must be finite number(s)")


#: Modality -> verifier. Image first: mask and boxes checks use the image size it records.
MODALITY_VERIFIER_MAP: dict[Modality, Callable[[Any, SampleContext], None]] = {
    Modality.IMAGE: verify_image,
    Modality.MASK: verify_mask,
    Modality.BOXES: verify_boxes,
    Modality.CLASS: verify_class,
    Modality.CLASSES: verify_classes,
    Modality.VALUE: verify_value,
}


def verify_meta(meta: dict[str, Any], struct: TaskStruct, deep: bool = True) -> None:
    """Check splits and every sample of a parsed ``task.json``; raises on the first problem."""
    name = struct.name
    ids = [s["id"] for s in meta["samples"]]
    id_set = set(ids)
    if len(id_set) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise TaskVerificationError(f"task {name!r}: duplicate sample id {dup!r}")
    labelled = {Modality.CLASS, Modality.CLASSES, Modality.MASK, Modality.BOXES}
    if struct.task_type.requires() & labelled and struct.num_classes == 0:
        raise TaskVerificationError(f"task {name!r}: class_names is empty")
    seen: dict[str, str] = {}
    for where, members in [*((f"fold {k}", f) for k, f in enumerate(meta["folds"])), ("test", meta["test"])]:
        for sid in members:
            if sid not in id_set:
                raise TaskVerificationError(f"task {name!r}: {where} names unknown sample {sid!r}")
            if sid in seen:
                raise TaskVerificationError(f"task {name!r}: sample {sid!r} is in both {seen[sid]} and {where}")
            seen[sid] = where
    required = struct.task_type.requires() - {Modality.SAMPLE_ID}
    ordered = sorted(MODALITY_VERIFIER_MAP, key=lambda m: m is not Modality.IMAGE)
    for sample in meta["samples"]:
        sid = sample["id"]
        missing = [m.value for m in required if m.value not in sample]
        if missing:
            raise TaskVerificationError(f"task {name!r}: sample {sid!r} lacks {missing}")
        ctx = SampleContext(struct=struct, sample=sample, deep=deep)
        for modality in ordered:
            if modality.value not in sample:
                continue
            try:
                MODALITY_VERIFIER_MAP[modality](sample[modality.value], ctx)
            except ValueError as err:
                raise TaskVerificationError(
                    f"task {name!r}: sample {sid!r} {modality.value}: {err}"
                ) from None


def verify_task(task_dir: str | os.PathLike, deep: bool = True) -> TaskStruct:
    """Read and verify a task folder; returns its :class:`TaskStruct`.

    ``deep=False`` skips decoding pixels (files must still exist and headers parse): what
    ``load_task_struct`` does on every load. ``deep=True`` also checks mask label ranges and that
    every image decodes; ``create_task`` runs it once before publishing a task.
    """
    task_dir = Path(task_dir)
    meta = read_task_json(task_dir)
    struct = struct_from_meta(meta, task_dir)
    if meta["name"] != task_dir.name and not task_dir.name.startswith("."):
        raise TaskFormatError(f"task folder {task_dir.name!r} holds task.json of {meta['name']!r}")
    verify_meta(meta, struct, deep=deep)
    return struct
