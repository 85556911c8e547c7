"""Image-bank sources: the source spec (path shorthand or dict) normalised, and the fields it loads.

A source spec names exactly one of ``pt`` (a ``torch.save`` dict), ``folder`` (image files, sub-folders
as classes) or ``task`` (a pandemonium task's splits); see :mod:`pandemonium.attack.stages.banks` for
the keys. :func:`load_source` returns the fields :class:`~pandemonium.attack.stages.banks.ImageBank`
is built from; every failure is one :class:`BankError` naming the source.

>>> normalise_bank_spec("scenes/bank.pt")
{'pt': 'scenes/bank.pt'}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pandemonium.errors import PandemoniumError

__all__ = ["BankError", "IMAGE_SUFFIXES", "describe_source", "load_folder", "load_pt", "load_source", "load_task",
           "normalise_bank_spec"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class BankError(PandemoniumError, ValueError):
    """Bad image-bank source or content; the message names the source and the offending value."""


def normalise_bank_spec(spec: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Turn a bank source (path shorthand or dict) into a plain JSON-serialisable dict."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        key = "pt" if path.suffix in {".pt", ".pth"} else "folder"
        return {key: str(spec)}
    if isinstance(spec, Mapping):
        out = {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in dict(spec).items()}
        if "path" in out:
            path = out.pop("path")
            out.update(normalise_bank_spec(path))
        kinds = [k for k in ("pt", "folder", "task") if k in out]
        if len(kinds) != 1:
            raise BankError(f"image bank spec {spec!r} must name exactly one of 'pt', 'folder', 'task'")
        return out
    raise BankError(f"image bank spec must be a path or a dict, got {type(spec).__name__}: {spec!r}")


def describe_source(spec: Mapping[str, Any]) -> str:
    """The short name of a normalised source in messages: ``pt='bank.pt'``, ``folder='dir'``, ``task='name'``."""
    for key in ("pt", "folder", "task"):
        if key in spec:
            return f"{key}={spec[key]!r}"
    return repr(dict(spec))


def load_source(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~pandemonium.attack.stages.banks.ImageBank` fields (``images``, ``classes``, ``masks``,
    ``boxes``, ``labels``, ``quads``, ``split``) of a normalised source, cut to ``max_images``."""
    source = describe_source(spec)
    if "pt" in spec:
        fields = load_pt(Path(spec["pt"]), source)
    elif "folder" in spec:
        fields = load_folder(Path(spec["folder"]), spec.get("image_size"), source)
    else:
        fields = load_task(spec, source)
    max_images = spec.get("max_images")
    if max_images is not None:
        keep = int(max_images)
        fields = {k: (v[:keep] if v is not None else None) for k, v in fields.items()}
    return fields


def load_pt(path: Path, source: str) -> dict[str, Any]:
    if not path.is_file():
        raise BankError(f"image bank {source}: file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unpickling failure: name the file, keep the cause
        raise BankError(f"image bank {source}: cannot read {path}: {err}") from err
    if not isinstance(data, Mapping) or "images" not in data:
        keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise BankError(f"image bank {source}: {path} must hold a dict with an 'images' tensor, got {keys}")
    known = {"images", "class", "classes", "mask", "masks", "boxes", "labels", "quads", "split"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BankError(f"image bank {source}: unknown key(s) {unknown} in {path}; known: {sorted(known)}")
    return {
        "images": data["images"],
        "classes": data.get("class", data.get("classes")),
        "masks": data.get("mask", data.get("masks")),
        "boxes": data.get("boxes"),
        "labels": data.get("labels"),
        "quads": data.get("quads"),
        "split": data.get("split"),
    }

def load_folder(folder: Path, image_size: Sequence[int] | None, source: str) -> dict[str, Any]:
    from PIL import Image, UnidentifiedImageError

    if not folder.is_dir():
        raise BankError(f"image bank {source}: folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BankError(f"image bank {source}: no image files ({sorted(IMAGE_SUFFIXES)}) in {folder}")
    subdirs = sorted({p.parent.relative_to(folder).parts[0] for p in files if p.parent != folder})
    images, classes = [], []
    size = tuple(image_size) if image_size is not None else None
    for path in files:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if size is None:
                    size = (im.height, im.width)
                if (im.height, im.width) != size:
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8).copy()
        except (UnidentifiedImageError, OSError) as err:
            raise BankError(f"image bank {source}: cannot read image {path}: {err}") from err
        images.append(torch.from_numpy(arr).permute(2, 0, 1))
        rel = path.relative_to(folder).parts
        classes.append(subdirs.index(rel[0]) if len(rel) > 1 else -1)
    return {"images": torch.stack(images), "classes": torch.tensor(classes)}

def load_task(spec: Mapping[str, Any], source: str) -> dict[str, Any]:
    try:
        from pandemonium.attack.splits import attack_split_ids
        from pandemonium.tasks.creators import load_task_struct
        from pandemonium.tasks.datamodule import TaskDataset
        from pandemonium.tasks.format import read_task_json
    except ImportError as err:  # the tasks layer is optional for banks built from files
        raise BankError(f"image bank {source}: pandemonium.tasks is not available ({err})") from err
    try:
        struct = load_task_struct(spec["task"], spec.get("data_dir"))
    except Exception as err:  # the task layer's errors name the task; add which bank asked
        raise BankError(f"image bank {source}: {err}") from err
    fold = int(spec.get("fold", 0))
    fields: dict[str, list] = {k: [] for k in ("images", "classes", "masks", "boxes", "labels", "quads", "split")}
    for split_name, tag in ((spec.get("train_split", "train"), "train"), (spec.get("eval_split", "test"), "eval")):
        # a one-fold task's train / val are derived from its fold (pandemonium.attack.splits)
        ids = attack_split_ids(read_task_json(struct.task_dir), split_name, fold)
        dataset = TaskDataset(struct, split_name, fold=fold, sample_ids=ids)
        limit = spec.get("max_images_per_split")
        count = len(dataset) if limit is None else min(len(dataset), int(limit))
        for i in range(count):
            sample = dataset[i]
            fields["images"].append(sample["image"])
            fields["classes"].append(int(sample["class"]) if "class" in sample else -1)
            fields["masks"].append(sample.get("mask"))
            fields["boxes"].append(sample.get("boxes"))
            fields["labels"].append(sample.get("labels"))
            fields["quads"].append(sample.get("quads"))
            fields["split"].append(tag)
    if not fields["images"]:
        raise BankError(f"image bank {source}: task has no samples in the requested splits")
    out: dict[str, Any] = {"images": torch.stack(fields["images"]), "classes": torch.tensor(fields["classes"])}
    out["masks"] = torch.stack(fields["masks"]) if all(m is not None for m in fields["masks"]) else None
    for key in ("boxes", "labels", "quads"):
        out[key] = fields[key] if all(v is not None for v in fields[key]) else None
    out["split"] = fields["split"]
    return out
