"""``TaskDataset`` / ``TaskDataModule``: batches of one task's split, as dicts keyed by modality.

>>> dm = TaskDataModule(struct, fold=0, batch_size=16)          # doctest: +SKIP
>>> dm.setup("fit"); batch = next(iter(dm.train_dataloader()))  # doctest: +SKIP
>>> batch["image"].shape, batch["class"].dtype                  # doctest: +SKIP
(torch.Size([16, 3, 64, 64]), torch.int64)

Train and val come from the task's k folds (val = fold ``fold``, train = the others), test from its
test split. Images stay in [0,1] unless ``normalize=True`` (models normalise internally).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, get_worker_info

from pandemonium.tasks.attributes import BOX_LABELS_KEY, Modality
from pandemonium.tasks.augmentations import (
    apply_cpu_augmentations,
    build_cpu_augmentations,
    normalize_flag,
)
from pandemonium.tasks.errors import TaskFormatError
from pandemonium.tasks.format import read_task_json, split_ids
from pandemonium.tasks.loaders import ModalityLoader, build_loaders
from pandemonium.tasks.struct import TaskStruct

SPLITS = ("train", "val", "test", "all")
#: Batch keys whose per-sample tensors differ in length and are kept as lists by ``collate_samples``.
LIST_KEYS = frozenset({Modality.BOXES.value, BOX_LABELS_KEY, "quads"})


class TaskDataset(Dataset):
    """One split of a task. Items are dicts: ``"image"`` (float C×H×W in [0,1]), the target
    (``"class"`` long, ``"mask"`` long H×W, ``"boxes"`` float N×4 xyxy + ``"labels"`` long N,
    ``"classes"`` long multi-hot, ``"value"`` float) and ``"sample_id"`` (str).
    """

    def __init__(
        self,
        struct: TaskStruct,
        split: str = "train",
        fold: int = 0,
        loaders: Mapping[Modality, ModalityLoader] | None = None,
        transform: Callable[..., Any] | None = None,
        normalize: bool = False,
        sample_ids: Sequence[str] | None = None,
    ) -> None:
        if struct.task_dir is None:
            raise TaskFormatError(f"task {struct.name!r}: struct has no task_dir, cannot load samples")
        if split not in SPLITS:
            raise ValueError(f"task {struct.name!r}: unknown split {split!r}; use one of {SPLITS}")
        self.struct = struct
        self.split = split
        self.fold = fold
        meta = read_task_json(struct.task_dir)
        by_id = {s["id"]: s for s in meta["samples"]}
        ids = list(sample_ids) if sample_ids is not None else split_ids(meta, split, fold)
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise TaskFormatError(f"task {struct.name!r}: unknown sample ids {unknown[:5]}")
        self.samples = [by_id[i] for i in ids]
        self.loaders = dict(loaders) if loaders is not None else build_loaders()
        self.modalities = [m for m in struct.modalities if m in self.loaders]
        self.transform = transform
        self.normalize = normalize
        self._mean = torch.tensor(struct.mean, dtype=torch.float32).view(-1, 1, 1)
        self._std = torch.tensor(struct.std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def sample_ids(self) -> list[str]:
        return [s["id"] for s in self.samples]

    def load_raw(self, index: int) -> dict[Modality, Any]:
        """The sample's modalities as loaded (numpy), before augmentation."""
        sample = self.samples[index]
        task_dir = self.struct.task_dir
        assert task_dir is not None
        return {m: self.loaders[m].load(sample[m.value], task_dir) for m in self.modalities if m.value in sample}

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.load_raw(index)
        if self.transform is not None:
            raw = apply_cpu_augmentations(self.transform, raw)
        item: dict[str, Any] = {}
        for modality, value in raw.items():
            out = self.loaders[modality].to_tensor(value)
            if isinstance(out, dict):
                item.update(out)
            else:
                item[modality.value] = out
        if self.normalize and Modality.IMAGE.value in item:
            item[Modality.IMAGE.value] = (item[Modality.IMAGE.value] - self._mean) / self._std
        item[Modality.SAMPLE_ID.value] = self.samples[index]["id"]
        if self.samples[index].get("quads") is not None and self.transform is None:
            # placement surfaces (TL, TR, BR, BL pixels) of imported images, for the perspective implanter's
            # bank; an augmentation would move the image under them, so they come only untransformed
            item["quads"] = torch.tensor(self.samples[index]["quads"], dtype=torch.float32).reshape(-1, 4, 2)
        return item


def collate_samples(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack what stacks (same-shape tensors); keep boxes/labels, strings and ragged tensors as lists."""
    if not items:
        return {}
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        first = values[0]
        if key in LIST_KEYS or not isinstance(first, torch.Tensor):
            batch[key] = values
        elif all(v.shape == first.shape for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    return batch


def _seed_worker(worker_id: int) -> None:
    # each worker gets its own copy of the Compose; re-seed it from the loader's base seed so
    # workers neither repeat each other nor depend on global state
    info = get_worker_info()
    if info is None:
        return
    transform = getattr(info.dataset, "transform", None)
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(int(info.seed % 2**31))


class TaskDataModule(L.LightningDataModule):
    """Lightning datamodule of one task: train/val from fold ``fold``, test from the test split.

    ``sample_num`` caps (or extends) the train samples drawn per epoch, drawn by a seeded
    ``RandomSampler``; val/test are never shuffled or capped. ``cpu_augmentations`` is an
    albumentations ``Compose`` (or a config accepted by :func:`build_cpu_augmentations`),
    applied to train only.
    """

    def __init__(
        self,
        struct: TaskStruct,
        fold: int = 0,
        batch_size: int = 32,
        num_workers: int = 0,
        cpu_augmentations: Any = None,
        seed: int = 0,
        sample_num: int | None = None,
        loaders: Mapping[Modality, ModalityLoader] | None = None,
        normalize: bool = False,
        eval_batch_size: int | None = None,
        drop_last: bool = False,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if sample_num is not None and sample_num < 1:
            raise ValueError(f"sample_num must be >= 1 or None, got {sample_num}")
        if struct.num_folds and not 0 <= fold < struct.num_folds:
            raise ValueError(f"task {struct.name!r}: fold {fold} out of range, it has {struct.num_folds} folds")
        self.struct = struct
        self.fold = fold
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.sample_num = sample_num
        self.loaders = dict(loaders) if loaders is not None else build_loaders()
        self.normalize = normalize
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        if cpu_augmentations is not None and not callable(cpu_augmentations):
            cpu_augmentations = build_cpu_augmentations(cpu_augmentations, struct.task_type, seed, struct.modalities)
        self.cpu_augmentations = cpu_augmentations
        self.datasets: dict[str, TaskDataset] = {}

    def dataset(self, split: str) -> TaskDataset:
        """The (cached) dataset of ``split``; augmentations only on ``train``."""
        if split not in self.datasets:
            self.datasets[split] = TaskDataset(
                self.struct, split, self.fold, loaders=self.loaders,
                transform=self.cpu_augmentations if split == "train" else None, normalize=self.normalize,
            )
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage or "", ("train", "val", "test")):
            self.dataset(split)

    def _loader(self, dataset: TaskDataset, sampler: Any, batch_size: int, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=collate_samples, drop_last=drop_last, pin_memory=self.pin_memory,
            worker_init_fn=_seed_worker if self.num_workers > 0 else None,
            generator=torch.Generator().manual_seed(self.seed + 1),  # base seed of the workers
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train")
        generator = torch.Generator().manual_seed(self.seed)
        sampler = RandomSampler(dataset, num_samples=self.sample_num, generator=generator)
        return self._loader(dataset, sampler, self.batch_size, self.drop_last)

    def eval_dataloader(self, split: str) -> DataLoader:
        """Ordered, uncapped loader of any split (``train``/``val``/``test``/``all``) without augmentation."""
        if split == "train":
            dataset = TaskDataset(self.struct, "train", self.fold, loaders=self.loaders, normalize=self.normalize)
        else:
            dataset = self.dataset(split)
        return self._loader(dataset, SequentialSampler(dataset), self.eval_batch_size, False)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")

    @classmethod
    def from_config(cls, struct: TaskStruct, cfg: Any, fold: int | None = None, **overrides: Any) -> TaskDataModule:
        """Build from the composed run config: ``cfg.sampling`` (``batch_size``, ``num_workers``,
        ``sample_num``, optional ``eval_batch_size``), ``cfg.augmentations`` (``cpu`` list, ``normalize``),
        ``cfg.loaders`` and ``cfg.seed``; ``fold`` defaults to ``cfg.mode.fold``, then ``cfg.fold``, then 0.
        """
        from omegaconf import DictConfig, OmegaConf

        if not isinstance(cfg, DictConfig):
            cfg = OmegaConf.create(cfg)
        sampling = OmegaConf.select(cfg, "sampling", default=None) or {}
        aug_cfg = OmegaConf.select(cfg, "augmentations", default=None)
        seed = int(OmegaConf.select(cfg, "seed", default=0) or 0)
        if fold is None:
            fold = OmegaConf.select(cfg, "mode.fold", default=None)
            if fold is None:
                fold = OmegaConf.select(cfg, "fold", default=0)
        sample_num = sampling.get("sample_num", None)
        kwargs: dict[str, Any] = {
            "fold": int(fold or 0),
            "batch_size": int(sampling.get("batch_size", 32)),
            "num_workers": int(sampling.get("num_workers", 0)),
            "sample_num": None if sample_num is None else int(sample_num),
            "eval_batch_size": sampling.get("eval_batch_size", None),
            "seed": seed,
            "cpu_augmentations": build_cpu_augmentations(aug_cfg, struct.task_type, seed, struct.modalities),
            "normalize": normalize_flag(aug_cfg),
            "loaders": build_loaders(OmegaConf.select(cfg, "loaders", default=None)),
        }
        kwargs.update(overrides)
        return cls(struct, **kwargs)


def numpy_image(tensor: torch.Tensor) -> np.ndarray:
    """C×H×W tensor in [0,1] → H×W×C (or H×W for grey) float array for plotting."""
    array = tensor.detach().cpu().float().clamp(0, 1).numpy().transpose(1, 2, 0)
    return array[:, :, 0] if array.shape[2] == 1 else array
