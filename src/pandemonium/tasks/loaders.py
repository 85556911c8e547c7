"""One :class:`ModalityLoader` per modality: turns a sample's ``task.json`` entry into data.

Loading happens in two steps so CPU augmentations (albumentations, numpy HWC) sit in between:
``load(entry, task_dir)`` gives raw numpy data, ``to_tensor(raw)`` gives the batch tensors.
Which class loads which modality is config (``configs/loaders/default.yaml``)::

    image:
      _target_: pandemonium.tasks.loaders.ImageLoader

A plugin adding a modality registers its default loader with :func:`register_modality_loader`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pandemonium.tasks.attributes import BOX_LABELS_KEY, Modality
from pandemonium.tasks.errors import TaskFileError
from pandemonium.tasks.image_cache import IMAGE_CACHE, file_key


class ModalityLoader:
    """Base class: ``load`` reads one entry (raw numpy), ``to_tensor`` converts it for the batch.

    ``to_tensor`` returns a tensor (stored under the modality's key) or a dict of tensors (stored
    under its own keys, as :class:`BoxesLoader` does with ``boxes`` and ``labels``).
    """

    modality: Modality

    def load(self, entry: Any, task_dir: Path) -> Any:
        raise NotImplementedError

    def to_tensor(self, raw: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, entry: Any, task_dir: Path) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.to_tensor(self.load(entry, task_dir))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _open_image(entry: Any, task_dir: Path) -> Image.Image:
    path = Path(task_dir) / str(entry)
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise TaskFileError(f"task {Path(task_dir).name!r}: sample file {path} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise TaskFileError(f"task {Path(task_dir).name!r}: cannot decode image {path} ({err})") from None
    return image


class ImageLoader(ModalityLoader):
    """PNG/JPEG → float32 HxWxC in [0,1] (raw) → tensor CxHxW.

    ``mode`` forces a PIL mode (``"RGB"``/``"L"``); by default grey stays 1 channel and anything
    with colour becomes RGB. Decoded images are kept in :data:`pandemonium.tasks.image_cache.IMAGE_CACHE`
    (epochs and scene banks read the same files again).
    """

    modality = Modality.IMAGE

    def __init__(self, mode: str | None = None) -> None:
        self.mode = mode

    def load(self, entry: Any, task_dir: Path) -> np.ndarray:
        key = file_key(Path(task_dir) / str(entry), "image", self.mode)
        cached = IMAGE_CACHE.get(key) if key is not None else None
        if cached is not None:
            return cached
        image = _open_image(entry, task_dir)
        mode = self.mode or ("L" if image.mode in ("L", "I;16", "I", "1") else "RGB")
        if image.mode != mode:
            image = image.convert(mode)
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = array[:, :, None] if array.ndim == 2 else array
        if key is not None:
            IMAGE_CACHE.put(key, array)
        return array

    def to_tensor(self, raw: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(raw.transpose(2, 0, 1), dtype=np.float32))


class MaskLoader(ModalityLoader):
    """Single-channel PNG of class indices → int64 HxW."""

    modality = Modality.MASK

    def load(self, entry: Any, task_dir: Path) -> np.ndarray:
        image = _open_image(entry, task_dir)
        array = np.asarray(image)
        if array.ndim != 2:
            path = Path(task_dir) / str(entry)
            raise TaskFileError(
                f"task {Path(task_dir).name!r}: mask {path} must be single-channel, has shape {array.shape}"
            )
        return array.astype(np.int64)

    def to_tensor(self, raw: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(raw, dtype=np.int64))


class BoxesLoader(ModalityLoader):
    """``{"xyxy": [[x1, y1, x2, y2], ...], "labels": [...]}`` → (float32 Nx4 pixels, int64 N)."""

    modality = Modality.BOXES

    def load(self, entry: Any, task_dir: Path) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.asarray(entry.get("xyxy", []), dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(entry.get("labels", []), dtype=np.int64).reshape(-1)
        return boxes, labels

    def to_tensor(self, raw: tuple[np.ndarray, np.ndarray]) -> dict[str, torch.Tensor]:
        boxes, labels = raw
        return {
            Modality.BOXES.value: torch.as_tensor(np.asarray(boxes, np.float32).reshape(-1, 4)),
            BOX_LABELS_KEY: torch.as_tensor(np.asarray(labels, np.int64).reshape(-1)),
        }


class ClassLoader(ModalityLoader):
    """Class index → int64 scalar."""

    modality = Modality.CLASS

    def load(self, entry: Any, task_dir: Path) -> int:
        return int(entry)

    def to_tensor(self, raw: int) -> torch.Tensor:
        return torch.tensor(raw, dtype=torch.long)


class ClassesLoader(ModalityLoader):
    """Multi-hot list → int64 vector of length ``num_classes`` (use ``.float()`` for BCE losses)."""

    modality = Modality.CLASSES

    def load(self, entry: Any, task_dir: Path) -> np.ndarray:
        return np.asarray(entry, dtype=np.int64).reshape(-1)

    def to_tensor(self, raw: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(raw, dtype=torch.long)


class ValueLoader(ModalityLoader):
    """Regression target (number or list) → float32 scalar / vector."""

    modality = Modality.VALUE

    def load(self, entry: Any, task_dir: Path) -> np.ndarray:
        return np.asarray(entry, dtype=np.float32)

    def to_tensor(self, raw: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(raw, dtype=torch.float32)


#: Loader class used for a modality when the loaders config does not name one.
DEFAULT_LOADERS: dict[Modality, type[ModalityLoader]] = {
    Modality.IMAGE: ImageLoader,
    Modality.MASK: MaskLoader,
    Modality.BOXES: BoxesLoader,
    Modality.CLASS: ClassLoader,
    Modality.CLASSES: ClassesLoader,
    Modality.VALUE: ValueLoader,
}


def register_modality_loader(modality: Modality | str, loader_cls: type[ModalityLoader]) -> None:
    """Make ``loader_cls`` the default loader of ``modality`` (for plugins adding a modality)."""
    if not (isinstance(loader_cls, type) and issubclass(loader_cls, ModalityLoader)):
        raise TypeError(f"{loader_cls!r} is not a ModalityLoader subclass")
    DEFAULT_LOADERS[Modality(modality)] = loader_cls


def build_loaders(cfg: Mapping[str, Any] | None = None) -> dict[Modality, ModalityLoader]:
    """Instantiate one loader per modality from a ``configs/loaders`` mapping (``_target_`` + kwargs).

    Modalities missing from ``cfg`` get their :data:`DEFAULT_LOADERS` class; ``sample_id`` needs none.
    """
    loaders: dict[Modality, ModalityLoader] = {m: cls() for m, cls in DEFAULT_LOADERS.items()}
    if not cfg:
        return loaders
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    for key, spec in plain.items():
        try:
            modality = Modality(key)
        except ValueError:
            known = ", ".join(m.value for m in Modality)
            raise ValueError(f"loaders config: unknown modality {key!r} (known: {known})") from None
        if spec is None:
            continue
        try:
            loader = instantiate(spec)
        except Exception as err:  # hydra wraps import errors; re-raise naming the key
            raise ValueError(f"loaders config: cannot build loader for {key!r} from {spec}: {err}") from None
        if not isinstance(loader, ModalityLoader):
            raise TypeError(f"loaders config: {key!r} built {type(loader).__name__}, not a ModalityLoader")
        loaders[modality] = loader
    return loaders


def image_size_of(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the file header only (fast; used by verifiers)."""
    with Image.open(path) as image:
        return image.size[1], image.size[0]
