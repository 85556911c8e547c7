"""Dset creators that import users' own data into the task format.

>>> create_task("flowers", data_dir, creator="import_folder", root="/data/flowers")          # doctest: +SKIP
>>> create_task("xrays", data_dir, creator="import_csv", csv_path="/data/xrays/labels.csv")   # doctest: +SKIP
>>> create_task("cars", data_dir, creator="import_coco", annotation_file="/data/coco.json")  # doctest: +SKIP

Images are re-encoded as PNG inside the task folder (optionally resized), so every task reads the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from pandemonium.tasks.attributes import TaskType
from pandemonium.tasks.builtin._progress import progress
from pandemonium.tasks.creators import register_dsetcreator
from pandemonium.tasks.errors import TaskCreationError, TaskFileError
from pandemonium.tasks.format import TaskWriter

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _size_tuple(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """(H, W) from an int or a pair."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def _read_image(path: Path, channels: int, size_hw: tuple[int, int] | None) -> tuple[np.ndarray, float, float]:
    """Image as uint8 array, plus the x/y scale factors applied by resizing."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            width, height = image.size
            if size_hw is not None and (height, width) != size_hw:
                image = image.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
            array = np.asarray(image)
    except FileNotFoundError:
        raise TaskFileError(f"image file {path} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise TaskFileError(f"cannot decode image {path} ({err})") from None
    return array, array.shape[1] / width, array.shape[0] / height


def _existing_dir(path: str | Path, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TaskCreationError(f"{what} {folder} is not a folder")
    return folder


@register_dsetcreator("import_folder", task_type=TaskType.CLASSIFICATION, keywords=("imported",))
def import_folder(writer: TaskWriter, rng: np.random.Generator, root: str | Path = "",
                  image_size: int | Sequence[int] | None = None, channels: int = 3,
                  extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
    """ImageFolder layout: ``root/<class name>/<image>``; class names are the sorted folder names."""
    folder = _existing_dir(root, "import_folder: root")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise TaskCreationError(f"import_folder: {folder} has no class subfolders")
    writer.task_type = TaskType.CLASSIFICATION
    writer.class_names = classes
    writer.description = writer.description or f"Imported from image folder {folder}"
    size_hw = _size_tuple(image_size)
    suffixes = {e.lower() for e in extensions}
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in suffixes and p.is_file())
        if not files:
            log.warning("import_folder: class folder %s holds no images", folder / name)
        for file in progress(files, f"import_folder {name}"):
            image, _, _ = _read_image(file, channels, size_hw)
            writer.add_sample(image=image, cls=label)


@register_dsetcreator("import_csv", task_type=TaskType.CLASSIFICATION, keywords=("imported",))
def import_csv(writer: TaskWriter, rng: np.random.Generator, csv_path: str | Path = "",
               image_column: str = "path", label_column: str = "label", root: str | Path | None = None,
               image_size: int | Sequence[int] | None = None, channels: int = 3,
               class_names: Sequence[str] | None = None) -> None:
    """A table of ``image_column`` (paths, relative to ``root`` or the CSV's folder) and ``label_column``.

    Labels are class names (or numbers) whose sorted unique values become the classes, unless
    ``class_names`` fixes the order.
    """
    import pandas as pd

    table_path = Path(csv_path).expanduser()
    if not table_path.is_file():
        raise TaskCreationError(f"import_csv: {table_path} does not exist")
    try:
        table = pd.read_csv(table_path)
    except (ValueError, pd.errors.ParserError) as err:
        raise TaskCreationError(f"import_csv: cannot parse {table_path} ({err})") from None
    for column in (image_column, label_column):
        if column not in table.columns:
            raise TaskCreationError(
                f"import_csv: {table_path} has no column {column!r} (columns: {list(table.columns)})"
            )
    base = Path(root).expanduser() if root is not None else table_path.parent
    labels = [str(v) for v in table[label_column]]
    names = [str(c) for c in class_names] if class_names is not None else sorted(set(labels))
    index = {name: k for k, name in enumerate(names)}
    writer.task_type = TaskType.CLASSIFICATION
    writer.class_names = names
    writer.description = writer.description or f"Imported from table {table_path}"
    size_hw = _size_tuple(image_size)
    rows = enumerate(zip(table[image_column], labels))
    for row, (rel, label) in progress(rows, "import_csv", total=len(labels)):
        if label not in index:
            raise TaskCreationError(f"import_csv: {table_path} row {row + 2}: label {label!r} not in {names}")
        image, _, _ = _read_image(base / str(rel), channels, size_hw)
        writer.add_sample(image=image, cls=index[label])


@register_dsetcreator("import_coco", task_type=TaskType.DETECTION, keywords=("imported", "coco"))
def import_coco(writer: TaskWriter, rng: np.random.Generator, annotation_file: str | Path = "",
                image_root: str | Path | None = None, image_size: int | Sequence[int] | None = None,
                channels: int = 3, skip_crowd: bool = True) -> None:
    """COCO detection JSON (``images``, ``annotations`` with ``bbox`` = x, y, w, h, ``categories``).

    Categories sorted by id become the classes; boxes are clipped to the image and converted to
    xyxy pixels (scaled when ``image_size`` resizes); empty boxes are dropped with a warning.
    """
    ann_path = Path(annotation_file).expanduser()
    try:
        coco: dict[str, Any] = json.loads(ann_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TaskCreationError(f"import_coco: {ann_path} does not exist") from None
    except json.JSONDecodeError as err:
        raise TaskCreationError(f"import_coco: {ann_path} is not valid JSON ({err})") from None
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise TaskCreationError(f"import_coco: {ann_path} lacks {key!r}")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: k for k, c in enumerate(categories)}
    writer.task_type = TaskType.DETECTION
    writer.class_names = [str(c["name"]) for c in categories]
    writer.description = writer.description or f"Imported from COCO annotations {ann_path}"
    base = Path(image_root).expanduser() if image_root is not None else ann_path.parent
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    size_hw = _size_tuple(image_size)
    dropped = 0
    for info in progress(sorted(coco["images"], key=lambda i: i["id"]), "import_coco"):
        image, sx, sy = _read_image(base / info["file_name"], channels, size_hw)
        height, width = image.shape[:2]
        boxes, labels = [], []
        for ann in by_image.get(info["id"], []):
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            if ann["category_id"] not in label_of:
                raise TaskCreationError(
                    f"import_coco: annotation {ann.get('id')} has unknown category_id {ann['category_id']}"
                )
            x, y, w, h = ann["bbox"]
            x1, y1 = max(0.0, x * sx), max(0.0, y * sy)
            x2, y2 = min(float(width), (x + w) * sx), min(float(height), (y + h) * sy)
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                dropped += 1
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(label_of[ann["category_id"]])
        writer.add_sample(image=image, boxes=np.asarray(boxes, np.float64).reshape(-1, 4), labels=labels)
    if dropped:
        log.warning("import_coco: dropped %d empty or out-of-image boxes from %s", dropped, ann_path)
