"""Dset creators that import users' own data into the task format.

>>> create_task("flowers", data_dir, creator="import_folder", root="/data/flowers")          # doctest: +SKIP
>>> create_task("xrays", data_dir, creator="import_csv", csv_path="/data/xrays/labels.csv")   # doctest: +SKIP
>>> create_task("cars", data_dir, creator="import_coco", annotation_file="/data/coco.json")  # doctest: +SKIP
>>> create_task("roads", data_dir, creator="import_masks", root="/data/roads")              # doctest: +SKIP

From the command line: ``pandemonium import task=my_photos from=folder root=/data/photos``.

Every file is decoded in full before anything is published (unreadable or truncated images fail with
the file's name), labels must be known, boxes must lie inside their image (a CSV row or COCO annotation
outside fails naming the row / id), masks must match their image. Images are decoded by a pool of
threads (``workers``) with a progress bar, re-encoded as PNG inside the task folder (optionally
resized); :func:`pandemonium.tasks.creators.create_task` builds in a hidden temporary folder and moves
it into place only when all of it verified, so an error never leaves half a task behind.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from pandemonium.tasks.attributes import TaskType
from pandemonium.tasks.builtin._progress import progress
from pandemonium.tasks.creators import register_dsetcreator
from pandemonium.tasks.errors import TaskCreationError, TaskFileError
from pandemonium.tasks.format import TaskWriter

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: CSV columns of a box (pixels of the original image) and of a four-corner quad (TL, TR, BR, BL)
BOX_COLUMNS = ("x1", "y1", "x2", "y2")
QUAD_COLUMNS = tuple(f"{axis}{k}" for k in range(1, 5) for axis in ("qx", "qy"))
#: ``from=`` names of ``pandemonium import`` -> importer name
IMPORTERS = {"folder": "import_folder", "csv": "import_csv", "coco": "import_coco", "masks": "import_masks"}
_T = TypeVar("_T")
_R = TypeVar("_R")


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
            image = image.convert("L" if channels == 1 else "RGB")  # decodes it all: truncation fails here
            width, height = image.size
            if size_hw is not None and (height, width) != size_hw:
                image = image.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
            array = np.asarray(image)
    except FileNotFoundError:
        raise TaskFileError(f"image file {path} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise TaskFileError(f"cannot decode image {path} ({err})") from None
    return array, array.shape[1] / width, array.shape[0] / height


def _read_mask(path: Path) -> np.ndarray:
    """A single-channel mask of class ids (grey or palette image: the pixel values are the ids)."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "P", "I", "I;16", "1"):
                raise TaskFileError(f"mask {path} has mode {image.mode}: a mask is one channel of class ids")
            return np.asarray(image).astype(np.int64)
    except FileNotFoundError:
        raise TaskFileError(f"mask file {path} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise TaskFileError(f"cannot decode mask {path} ({err})") from None


def parallel_map(fn: Callable[[_T], _R], items: Sequence[_T], description: str, workers: int | None = None,
                 chunk: int = 256) -> Iterator[_R]:
    """``fn`` over ``items`` in order, decoded by ``workers`` threads (PIL releases the GIL while it
    decodes), with a progress bar; at most ``chunk`` results are held at once, so big folders stream."""
    workers = max(1, int(workers) if workers else min(8, os.cpu_count() or 1))
    bar = progress(range(len(items)), description, total=len(items))
    ticks = iter(bar)
    if workers == 1 or len(items) < 2:
        for item in items:
            yield fn(item)
            next(ticks, None)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(items), chunk):
            for result in pool.map(fn, items[start:start + chunk]):
                yield result
                next(ticks, None)
    getattr(bar, "close", lambda: None)()


def _existing_dir(path: str | Path, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise TaskCreationError(f"{what} {folder} is not a folder")
    return folder


def _images_in(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    wanted = {s.lower() for s in suffixes}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in wanted and p.is_file())


@register_dsetcreator("import_folder", task_type=TaskType.CLASSIFICATION, keywords=("imported",))
def import_folder(writer: TaskWriter, rng: np.random.Generator, root: str | Path = "",
                  image_size: int | Sequence[int] | None = None, channels: int = 3,
                  extensions: Sequence[str] = IMAGE_EXTENSIONS, workers: int | None = None) -> None:
    """ImageFolder layout: ``root/<class name>/<image>``; class names are the sorted folder names."""
    folder = _existing_dir(root, "import_folder: root")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise TaskCreationError(f"import_folder: {folder} has no class subfolders")
    writer.task_type = TaskType.CLASSIFICATION
    writer.class_names = classes
    writer.description = writer.description or f"Imported from image folder {folder}"
    size_hw = _size_tuple(image_size)
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files = _images_in(folder / name, extensions)
        if not files:
            log.warning("import_folder: class folder %s holds no images", folder / name)
        items += [(file, label) for file in files]
    if not items:
        raise TaskCreationError(f"import_folder: no images with extensions {list(extensions)} below {folder}")
    images = parallel_map(lambda item: _read_image(item[0], channels, size_hw)[0], items, "import_folder", workers)
    for (_, label), image in zip(items, images):
        writer.add_sample(image=image, cls=label)


def _read_table(table_path: Path, what: str) -> Any:
    import pandas as pd

    if not table_path.is_file():
        raise TaskCreationError(f"{what}: {table_path} does not exist")
    try:
        return pd.read_csv(table_path)
    except (ValueError, pd.errors.ParserError) as err:
        raise TaskCreationError(f"{what}: cannot parse {table_path} ({err})") from None


def _require_columns(table: Any, columns: Iterable[str], table_path: Path, why: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TaskCreationError(
            f"import_csv: {table_path} has no column {missing[0]!r} (columns: {list(table.columns)}); "
            f"columns {list(columns)} are needed {why}"
        )


def _inside(coords: Sequence[float], width: int, height: int) -> bool:
    xs, ys = coords[0::2], coords[1::2]
    return all(0 <= x <= width for x in xs) and all(0 <= y <= height for y in ys)


@register_dsetcreator("import_csv", task_type=TaskType.CLASSIFICATION, keywords=("imported",))
def import_csv(writer: TaskWriter, rng: np.random.Generator, csv_path: str | Path = "",
               image_column: str = "path", label_column: str = "label", root: str | Path | None = None,
               image_size: int | Sequence[int] | None = None, channels: int = 3,
               class_names: Sequence[str] | None = None, task_type: str | None = None,
               workers: int | None = None) -> None:
    """A table of ``image_column`` (paths, relative to ``root`` or the CSV's folder) and ``label_column``.

    - classification (default): one row per image, ``label_column`` holds its class;
    - detection (``task_type="detection"``, or automatic when the table has columns ``x1, y1, x2, y2``):
      one row per box, ``label_column`` holds the box's class; rows of one image are grouped;
    - placement quads: columns ``qx1, qy1, ..., qx4, qy4`` (TL, TR, BR, BL corners, pixels) add a
      four-corner surface per row to the image's ``quads`` (where a patch may be implanted in perspective).

    Labels are class names (or numbers) whose sorted unique values become the classes, unless
    ``class_names`` fixes the order. Coordinates are pixels of the original image; a box or quad outside
    it fails naming the CSV row (rows count from 2, the header being row 1, as a spreadsheet shows them).
    """
    table_path = Path(csv_path).expanduser()
    table = _read_table(table_path, "import_csv")
    has_boxes = all(c in table.columns for c in BOX_COLUMNS)
    has_quads = any(c in table.columns for c in QUAD_COLUMNS)
    kind = TaskType(task_type) if task_type else (TaskType.DETECTION if has_boxes else TaskType.CLASSIFICATION)
    if kind not in (TaskType.CLASSIFICATION, TaskType.DETECTION):
        raise TaskCreationError(f"import_csv: task_type {kind.value!r} is not importable from a CSV (classification, detection)")
    _require_columns(table, (image_column, label_column), table_path, f"for a {kind.value} task")
    if kind is TaskType.DETECTION:
        _require_columns(table, BOX_COLUMNS, table_path, "for boxes")
    if has_quads:
        _require_columns(table, QUAD_COLUMNS, table_path, "for four-corner quads")
    base = Path(root).expanduser() if root is not None else table_path.parent
    labels = [str(v) for v in table[label_column]]
    names = [str(c) for c in class_names] if class_names is not None else sorted(set(labels))
    index = {name: k for k, name in enumerate(names)}
    for row, label in enumerate(labels):
        if label not in index:
            raise TaskCreationError(f"import_csv: {table_path} row {row + 2}: label {label!r} not in {names}")
    writer.task_type = kind
    writer.class_names = names
    writer.description = writer.description or f"Imported from table {table_path}"
    size_hw = _size_tuple(image_size)

    # rows grouped by image, in order of first appearance
    groups: dict[str, list[int]] = {}
    for row, rel in enumerate(table[image_column]):
        groups.setdefault(str(rel), []).append(row)
    if kind is TaskType.CLASSIFICATION and not has_quads:
        doubled = next((rows for rows in groups.values() if len(rows) > 1), None)
        if doubled is not None:
            raise TaskCreationError(
                f"import_csv: {table_path} rows {[r + 2 for r in doubled]} name the same image "
                f"{table[image_column][doubled[0]]!r} (a classification table has one row per image)"
            )
    items = list(groups.items())
    images = parallel_map(lambda item: _read_image(base / item[0], channels, size_hw), items, "import_csv", workers)
    for (rel, rows), (image, sx, sy) in zip(items, images):
        width, height = round(image.shape[1] / sx), round(image.shape[0] / sy)
        boxes, box_labels, quads = [], [], []
        for row in rows:
            if kind is TaskType.DETECTION:
                coords = [float(table[c][row]) for c in BOX_COLUMNS]
                if not np.all(np.isfinite(coords)):
                    continue  # an image without boxes: its row has empty box cells
                if not _inside(coords, width, height) or coords[2] <= coords[0] or coords[3] <= coords[1]:
                    raise TaskCreationError(
                        f"import_csv: {table_path} row {row + 2}: box {coords} is empty or outside image "
                        f"{rel!r} of size {width}x{height} (W x H)"
                    )
                boxes.append([coords[0] * sx, coords[1] * sy, coords[2] * sx, coords[3] * sy])
                box_labels.append(index[labels[row]])
            if has_quads:
                quad = [float(table[c][row]) for c in QUAD_COLUMNS]
                if not np.all(np.isfinite(quad)):
                    continue
                if not _inside(quad, width, height):
                    raise TaskCreationError(
                        f"import_csv: {table_path} row {row + 2}: quad {quad} lies outside image {rel!r} "
                        f"of size {width}x{height} (W x H)"
                    )
                quads.append([[quad[2 * k] * sx, quad[2 * k + 1] * sy] for k in range(4)])
        extra = {"quads": [[[round(v, 3) for v in corner] for corner in q] for q in quads]} if has_quads else None
        if kind is TaskType.DETECTION:
            writer.add_sample(image=image, boxes=np.asarray(boxes, np.float64).reshape(-1, 4), labels=box_labels,
                              extra=extra)
        else:
            writer.add_sample(image=image, cls=index[labels[rows[0]]], extra=extra)


@register_dsetcreator("import_coco", task_type=TaskType.DETECTION, keywords=("imported", "coco"))
def import_coco(writer: TaskWriter, rng: np.random.Generator, annotation_file: str | Path = "",
                image_root: str | Path | None = None, image_size: int | Sequence[int] | None = None,
                channels: int = 3, skip_crowd: bool = True, workers: int | None = None) -> None:
    """COCO detection JSON (``images``, ``annotations`` with ``bbox`` = x, y, w, h, ``categories``).

    Categories sorted by id become the classes; boxes are converted to xyxy pixels (scaled when
    ``image_size`` resizes). An annotation of an unknown category or image id, or a box entirely
    outside its image, fails naming the annotation id; boxes cut by the border are clipped (the COCO
    convention) and degenerate (empty) boxes dropped with a warning.
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
    image_ids = {info["id"] for info in coco["images"]}
    writer.task_type = TaskType.DETECTION
    writer.class_names = [str(c["name"]) for c in categories]
    writer.description = writer.description or f"Imported from COCO annotations {ann_path}"
    base = Path(image_root).expanduser() if image_root is not None else ann_path.parent
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        if ann.get("category_id") not in label_of:
            raise TaskCreationError(
                f"import_coco: {ann_path}: annotation {ann.get('id')} has unknown category_id "
                f"{ann.get('category_id')} (categories: {sorted(label_of)})"
            )
        if ann.get("image_id") not in image_ids:
            raise TaskCreationError(
                f"import_coco: {ann_path}: annotation {ann.get('id')} has unknown image_id {ann.get('image_id')}"
            )
        by_image.setdefault(ann["image_id"], []).append(ann)
    size_hw = _size_tuple(image_size)
    dropped = 0
    infos = sorted(coco["images"], key=lambda i: i["id"])
    images = parallel_map(lambda info: _read_image(base / info["file_name"], channels, size_hw), infos,
                          "import_coco", workers)
    for info, (image, sx, sy) in zip(infos, images):
        height, width = image.shape[:2]
        boxes, labels = [], []
        for ann in by_image.get(info["id"], []):
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            orig_w, orig_h = width / sx, height / sy
            if x >= orig_w or y >= orig_h or x + w <= 0 or y + h <= 0:
                raise TaskCreationError(
                    f"import_coco: {ann_path}: annotation {ann.get('id')} box {[x, y, w, h]} (x, y, w, h) lies "
                    f"outside image {info['file_name']!r} of size {round(orig_w)}x{round(orig_h)}"
                )
            # COCO boxes may reach past the border (objects cut by the frame): clip them
            x1, y1 = max(0.0, x * sx), max(0.0, y * sy)
            x2, y2 = min(float(width), (x + w) * sx), min(float(height), (y + h) * sy)
            if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
                dropped += 1
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(label_of[ann["category_id"]])
        writer.add_sample(image=image, boxes=np.asarray(boxes, np.float64).reshape(-1, 4), labels=labels)
    if dropped:
        log.warning("import_coco: dropped %d empty boxes from %s", dropped, ann_path)


@register_dsetcreator("import_masks", task_type=TaskType.SEMANTIC_SEGMENTATION, keywords=("imported",))
def import_masks(writer: TaskWriter, rng: np.random.Generator, root: str | Path = "",
                 images: str = "images", masks: str = "masks", class_names: Sequence[str] | None = None,
                 image_size: int | Sequence[int] | None = None, channels: int = 3,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, workers: int | None = None) -> None:
    """Image + mask folders: ``root/<images>/<name>.<ext>`` and ``root/<masks>/<name>.png`` (same stem),
    each mask a single-channel image of class ids.

    Classes are ``class_names`` or ``class_0 ... class_<max id>``. A missing mask, a mask whose size
    differs from its image, or a class id beyond ``class_names`` fails naming the file.
    """
    folder = _existing_dir(root, "import_masks: root")
    image_dir = _existing_dir(folder / images, "import_masks: image folder")
    mask_dir = _existing_dir(folder / masks, "import_masks: mask folder")
    files = _images_in(image_dir, extensions)
    if not files:
        raise TaskCreationError(f"import_masks: no images in {image_dir}")
    mask_of: dict[str, Path] = {}
    for path in _images_in(mask_dir, extensions):
        mask_of.setdefault(str(path.relative_to(mask_dir).with_suffix("")), path)
    pairs = []
    for file in files:
        stem = str(file.relative_to(image_dir).with_suffix(""))
        if stem not in mask_of:
            raise TaskCreationError(f"import_masks: image {file} has no mask {mask_dir / stem}.png")
        pairs.append((file, mask_of[stem]))
    size_hw = _size_tuple(image_size)

    def read_pair(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        image, _, _ = _read_image(pair[0], channels, None)
        mask = _read_mask(pair[1])
        if mask.shape != image.shape[:2]:
            raise TaskFileError(
                f"mask {pair[1]} has size {mask.shape[1]}x{mask.shape[0]} but image {pair[0]} has "
                f"{image.shape[1]}x{image.shape[0]} (W x H)"
            )
        if size_hw is not None and image.shape[:2] != size_hw:
            image = np.asarray(Image.fromarray(image).resize((size_hw[1], size_hw[0]), Image.BILINEAR))
            mask = np.asarray(Image.fromarray(mask.astype(np.int32)).resize((size_hw[1], size_hw[0]), Image.NEAREST))
        return image, mask.astype(np.int64)

    decoded = list(parallel_map(read_pair, pairs, "import_masks", workers))
    top = max(int(mask.max(initial=0)) for _, mask in decoded)
    names = [str(c) for c in class_names] if class_names is not None else [f"class_{k}" for k in range(top + 1)]
    for (_, mask_path), (_, mask) in zip(pairs, decoded):
        if mask.min(initial=0) < 0 or mask.max(initial=0) >= len(names):
            raise TaskCreationError(
                f"import_masks: mask {mask_path} holds class id {int(mask.max())} but there are {len(names)} "
                f"classes {names}"
            )
    writer.task_type = TaskType.SEMANTIC_SEGMENTATION
    writer.class_names = names
    writer.description = writer.description or f"Imported from image + mask folders {folder}"
    for image, mask in decoded:
        writer.add_sample(image=image, mask=mask)
