"""The on-disk task format: ``<data_dir>/tasks/<name>/task.json`` plus PNG sample files.

``task.json`` (format version 1)::

    {
      "format_version": 1,
      "name": "shapes_cls", "task_type": "classification",
      "description": "...", "license": "...", "keywords": [...],
      "modalities": ["class", "image", "sample_id"],
      "class_names": ["circle", ...], "image_size": [64, 64], "channels": 3,
      "stats": {"mean": [...], "std": [...]},          # per channel, over train+val images in [0,1]
      "creation": {"seed": 0, "creator": "shapes_cls", "kwargs": {...}, "pandemonium_version": "0.1.0"},
      "samples": [{"id": "000000", "image": "images/000000.png", "class": 3}, ...],
      "folds": [["000004", ...], ...],                  # k disjoint lists of ids (train/val)
      "test": ["000001", ...]                           # held-out ids, in no fold
    }

Per-sample entries by modality: ``image``/``mask``: path relative to the task folder (masks are
single-channel PNGs holding class indices); ``class``: int; ``classes``: multi-hot list;
``boxes``: ``{"xyxy": [[x1, y1, x2, y2], ...], "labels": [...]}`` in pixels; ``value``: float or list.

:class:`TaskWriter` is what creators fill; :func:`read_task_json` / :func:`struct_from_meta` read it back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pandemonium.tasks.attributes import Modality, TaskType
from pandemonium.tasks.errors import TaskCreationError, TaskFormatError, TaskNameError
from pandemonium.tasks.struct import TaskStruct
from pandemonium.tasks.task_json import check_task_meta

FORMAT_VERSION = 1
TASK_FILE = "task.json"
TASKS_SUBDIR = "tasks"
#: Prefix of half-built task folders; ``list_tasks`` ignores them and ``clean`` may delete them.
TMP_PREFIX = ".tmp-"
TASK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
REQUIRED_KEYS = ("name", "task_type", "class_names", "image_size", "channels", "samples", "folds", "test")


def validate_task_name(name: str) -> str:
    """Return ``name`` if it can be a task folder name, else raise :class:`TaskNameError` naming it.

    >>> validate_task_name("shapes_cls")
    'shapes_cls'
    """
    if not isinstance(name, str) or not TASK_NAME_PATTERN.match(name) or name.startswith("."):
        bad = sorted({c for c in str(name) if not re.match(r"[A-Za-z0-9_.-]", c)})
        detail = f" (contains {', '.join(repr(c) for c in bad)})" if bad else ""
        raise TaskNameError(
            f"invalid task name {name!r}{detail}: task names must match {TASK_NAME_PATTERN.pattern} "
            "and not start with '.'"
        )
    return name


def default_data_dir() -> Path:
    """``$PANDEMONIUM_DATA`` or ``./data`` (the same default as ``data_dir`` in ``config.yaml``)."""
    return Path(os.environ.get("PANDEMONIUM_DATA") or "data")


def tasks_root(data_dir: str | os.PathLike | None) -> Path:
    """``<data_dir>/tasks``; ``data_dir=None`` means :func:`default_data_dir`."""
    return (default_data_dir() if data_dir is None else Path(data_dir)) / TASKS_SUBDIR


def task_path(data_dir: str | os.PathLike | None, name: str) -> Path:
    """Folder of task ``name`` below ``data_dir`` (the name is validated first)."""
    return tasks_root(data_dir) / validate_task_name(name)


def read_task_json(task_dir: str | os.PathLike) -> dict[str, Any]:
    """Load and schema-check ``task.json``; errors name the task folder and the problem."""
    task_dir = Path(task_dir)
    name = task_dir.name
    file = task_dir / TASK_FILE
    if not file.is_file():
        raise TaskFormatError(f"task {name!r}: {file} does not exist (not a task folder, or creation crashed)")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TaskFormatError(f"task {name!r}: {file} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise TaskFormatError(f"task {name!r}: {file} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise TaskFormatError(f"task {name!r}: {file} lacks required keys {missing}")
    version = meta.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise TaskFormatError(f"task {name!r}: {file} has format_version {version}, expected {FORMAT_VERSION}")
    check_task_meta(meta, file, name)
    return meta


def struct_from_meta(meta: dict[str, Any], task_dir: str | os.PathLike) -> TaskStruct:
    """Build the :class:`TaskStruct` of a parsed ``task.json``."""
    stats = meta.get("stats") or {}
    channels = int(meta["channels"])
    creation = meta.get("creation") or {}
    try:
        return TaskStruct(
            name=meta["name"],
            task_type=TaskType(meta["task_type"]),
            modalities=[Modality(m) for m in meta.get("modalities", [])],
            class_names=list(meta["class_names"]),
            num_samples=len(meta["samples"]),
            image_size=tuple(meta["image_size"]),
            channels=channels,
            mean=stats.get("mean", [0.5] * channels),
            std=stats.get("std", [0.25] * channels),
            task_dir=Path(task_dir),
            description=meta.get("description", ""),
            license=meta.get("license", ""),
            keywords=list(meta.get("keywords", [])),
            num_folds=len(meta["folds"]),
            num_test=len(meta["test"]),
            seed=int(creation.get("seed", 0)),
        )
    except (ValueError, TypeError, KeyError) as err:
        raise TaskFormatError(f"task {Path(task_dir).name!r}: malformed {TASK_FILE}: {err}") from None


def split_ids(meta: dict[str, Any], split: str, fold: int = 0) -> list[str]:
    """Sample ids of ``split`` (``train``/``val``: folds; ``test``; ``all``) in task.json order."""
    folds: list[list[str]] = meta["folds"]
    if split == "all":
        return [s["id"] for s in meta["samples"]]
    if split == "test":
        return list(meta["test"])
    if split not in ("train", "val"):
        raise ValueError(f"unknown split {split!r}; use 'train', 'val', 'test' or 'all'")
    if not folds:
        raise TaskFormatError(f"task {meta['name']!r} has no folds")
    if not 0 <= fold < len(folds):
        raise ValueError(f"task {meta['name']!r}: fold {fold} out of range, it has {len(folds)} folds")
    if split == "val":
        return list(folds[fold])
    return [i for k, f in enumerate(folds) if k != fold for i in f]


def make_splits(
    ids: Sequence[str],
    rng: np.random.Generator,
    num_folds: int = 5,
    test_fraction: float = 0.2,
    strata: Sequence[Any] | None = None,
) -> tuple[list[list[str]], list[str]]:
    """Seeded test split plus ``num_folds`` disjoint folds; stratified by ``strata`` when given.

    Stratification: within each stratum the ids are shuffled and dealt round-robin (test first),
    so every fold sees every class in about the same proportion.
    """
    if num_folds < 1:
        raise ValueError(f"num_folds must be >= 1, got {num_folds}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ids = list(ids)
    groups: dict[Any, list[str]] = {}
    for i, sid in enumerate(ids):
        groups.setdefault(None if strata is None else strata[i], []).append(sid)
    keys = sorted(groups, key=repr)
    # largest-remainder allocation: the test split holds round(n * test_fraction) ids in total
    exact = np.array([len(groups[k]) * test_fraction for k in keys])
    quota = np.floor(exact).astype(int)
    extra = int(round(len(ids) * test_fraction)) - int(quota.sum())
    for k in np.argsort(-(exact - quota), kind="stable")[:max(extra, 0)]:
        quota[k] += 1
    test: list[str] = []
    folds: list[list[str]] = [[] for _ in range(num_folds)]
    offset = 0  # rotate the dealing start so small strata do not all land in fold 0
    for key, n_test in zip(keys, quota):
        members = [groups[key][j] for j in rng.permutation(len(groups[key]))]
        test.extend(members[:n_test])
        for j, sid in enumerate(members[n_test:]):
            folds[(j + offset) % num_folds].append(sid)
        offset += len(members) - n_test
    order = {sid: i for i, sid in enumerate(ids)}
    return [sorted(f, key=order.__getitem__) for f in folds], sorted(test, key=order.__getitem__)


def _as_uint8_image(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
        else:
            raise TypeError(f"{what} must be uint8 or float in [0,1], got {array.dtype}")
    return array


class TaskWriter:
    """Collects samples into a task folder and writes ``task.json``; what task creators fill.

    >>> w = TaskWriter(tmp, "toy", TaskType.CLASSIFICATION, class_names=["a", "b"])  # doctest: +SKIP
    >>> w.add_sample(image=np.zeros((8, 8, 3), np.uint8), cls=1)                    # doctest: +SKIP
    >>> w.finish(seed=0)                                                              # doctest: +SKIP
    """

    def __init__(
        self,
        task_dir: str | os.PathLike,
        name: str,
        task_type: TaskType | str,
        class_names: Sequence[str] = (),
        channels: int | None = None,
        description: str = "",
        license: str = "",
        keywords: Sequence[str] = (),
        png_compress_level: int = 1,
    ) -> None:
        self.task_dir = Path(task_dir)
        self.name = validate_task_name(name)
        self.task_type = TaskType(task_type)
        self.class_names = [str(c) for c in class_names]
        self.channels = channels
        self.description = description
        self.license = license
        self.keywords = list(keywords)
        self.samples: list[dict[str, Any]] = []
        self.image_size: tuple[int, int] | None = None
        self._png_kwargs = {"compress_level": png_compress_level}
        self.task_dir.mkdir(parents=True, exist_ok=True)

    def _write_png(self, array: np.ndarray, rel: str) -> str:
        path = self.task_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, format="PNG", **self._png_kwargs)
        return rel

    def add_sample(
        self,
        image: np.ndarray,
        *,
        cls: int | None = None,
        classes: Sequence[int] | None = None,
        mask: np.ndarray | None = None,
        boxes: Sequence[Sequence[float]] | np.ndarray | None = None,
        labels: Sequence[int] | None = None,
        value: float | Sequence[float] | None = None,
        sample_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Write one sample's files and remember its entry; returns the sample id.

        ``image``: HxW (grey) or HxWxC, uint8 or float in [0,1]. ``mask``: HxW class indices.
        ``boxes``: Nx4 xyxy pixels with ``labels`` (N). ``extra``: further JSON entries (plugin modalities).
        """
        sid = sample_id if sample_id is not None else f"{len(self.samples):06d}"
        if not isinstance(sid, str) or not TASK_NAME_PATTERN.match(sid):  # ids become file names
            raise TaskCreationError(f"task {self.name!r}: sample id {sid!r} must match {TASK_NAME_PATTERN.pattern}")
        image = _as_uint8_image(image, f"task {self.name!r} sample {sid} image")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        channels = 1 if image.ndim == 2 else image.shape[2]
        if self.channels is None:
            self.channels = channels
        if channels != self.channels or channels not in (1, 3):
            raise TaskCreationError(
                f"task {self.name!r} sample {sid}: image has {channels} channels, task has {self.channels}"
            )
        if self.image_size is None:  # sizes may vary between samples; the first one is recorded
            self.image_size = (int(image.shape[0]), int(image.shape[1]))
        entry: dict[str, Any] = {"id": sid, "image": self._write_png(image, f"images/{sid}.png")}
        pixels = image.reshape(-1, channels).astype(np.float64) / 255.0
        entry["_stats"] = (pixels.sum(0), (pixels**2).sum(0), pixels.shape[0])
        if cls is not None:
            entry["class"] = int(cls)
        if classes is not None:
            entry["classes"] = [int(c) for c in classes]
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != image.shape[:2]:
                raise TaskCreationError(
                    f"task {self.name!r} sample {sid}: mask shape {mask.shape} != image shape {image.shape[:2]}"
                )
            mask_dtype = np.uint8 if mask.max(initial=0) < 256 else np.uint16
            entry["mask"] = self._write_png(mask.astype(mask_dtype), f"masks/{sid}.png")
        if boxes is not None:
            box_array = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            label_list = [int(v) for v in (labels if labels is not None else [])]
            if len(label_list) != len(box_array):
                raise TaskCreationError(
                    f"task {self.name!r} sample {sid}: {len(box_array)} boxes but {len(label_list)} labels"
                )
            entry["boxes"] = {"xyxy": [[round(float(v), 3) for v in b] for b in box_array], "labels": label_list}
        if value is not None:
            entry["value"] = float(value) if np.ndim(value) == 0 else [float(v) for v in value]
        if extra:
            entry.update(extra)
        self.samples.append(entry)
        return sid

    def finish(
        self,
        seed: int,
        num_folds: int = 5,
        test_fraction: float = 0.2,
        creator: str | None = None,
        creator_kwargs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Draw splits (seeded), compute image stats over train+val, write ``task.json``; returns it."""
        if not self.samples:
            raise TaskCreationError(f"task {self.name!r}: the creator added no samples")
        ids = [s["id"] for s in self.samples]
        if len(set(ids)) != len(ids):
            raise TaskCreationError(f"task {self.name!r}: duplicate sample ids")
        strata = None
        # single-label targets are stratified, so every fold sees every class
        if TaskType(self.task_type).target is Modality.CLASS and all("class" in s for s in self.samples):
            strata = [s["class"] for s in self.samples]
        split_rng = np.random.default_rng([seed, 0x5EED])  # independent of the creator's stream
        folds, test = make_splits(ids, split_rng, num_folds, test_fraction, strata)
        test_set = set(test)
        total = np.zeros(self.channels or 1)
        total_sq = np.zeros(self.channels or 1)
        count = 0
        for entry in self.samples:
            s, sq, n = entry.pop("_stats")
            if entry["id"] not in test_set:
                total += s
                total_sq += sq
                count += n
        if count == 0:
            raise TaskCreationError(f"task {self.name!r}: no train/val samples (test_fraction={test_fraction})")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
        modalities = set(self.task_type.requires())
        for entry in self.samples:
            modalities.update(Modality(k) for k in entry if k in Modality._value2member_map_)
        from pandemonium import __version__

        meta = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "task_type": self.task_type.value,
            "description": self.description,
            "license": self.license,
            "keywords": self.keywords,
            "modalities": sorted(m.value for m in modalities),
            "class_names": self.class_names,
            "image_size": list(self.image_size or (0, 0)),
            "channels": int(self.channels or 0),
            "stats": {"mean": [round(float(v), 6) for v in mean], "std": [round(float(v), 6) for v in std]},
            "creation": {
                "seed": int(seed),
                "creator": creator or self.name,
                "kwargs": creator_kwargs or {},
                "num_folds": num_folds,
                "test_fraction": test_fraction,
                "pandemonium_version": __version__,
            },
            "samples": self.samples,
            "folds": folds,
            "test": test,
        }
        write_task_json(self.task_dir, meta)
        return meta


def write_task_json(task_dir: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write ``task.json`` atomically (temp file + rename)."""
    file = Path(task_dir) / TASK_FILE
    tmp = file.with_suffix(".json.tmp")
    # default=str: creator kwargs may hold paths or numpy scalars; the record only has to be readable
    tmp.write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, file)
    return file
