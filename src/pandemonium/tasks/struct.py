"""``TaskStruct``: everything a scheduler, model or pipeline needs to know about one task.

A struct is light (no samples); the samples stay in ``task_dir/task.json``. ``paths`` carries the
artifacts that steps attach (``struct.paths["models"] = path``); schedulers persist it via
:meth:`TaskStruct.to_dict` / :meth:`TaskStruct.from_dict`, so everything in it must be JSON-able
(``pathlib.Path`` values are written as strings).

>>> s = TaskStruct(name="toy", task_type=TaskType.CLASSIFICATION, class_names=["a", "b"])
>>> s.target.value, s.num_classes
('class', 2)
>>> TaskStruct.from_dict(s.to_dict()) == s
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pandemonium.plain import to_plain
from pandemonium.tasks.attributes import Modality, TaskType


@dataclass
class TaskStruct:
    """Description of one task on disk plus the artifact paths attached to it during a run."""

    name: str
    task_type: TaskType
    modalities: list[Modality] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    num_samples: int = 0
    image_size: tuple[int, int] = (0, 0)
    channels: int = 3
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    task_dir: Path | None = None
    paths: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    license: str = ""
    keywords: list[str] = field(default_factory=list)
    num_folds: int = 0
    num_test: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        self.task_type = TaskType(self.task_type)
        self.modalities = [Modality(m) for m in self.modalities] or sorted(
            self.task_type.requires(), key=lambda m: m.value
        )
        self.class_names = [str(c) for c in self.class_names]
        self.image_size = (int(self.image_size[0]), int(self.image_size[1]))
        self.mean = [float(v) for v in self.mean]
        self.std = [float(v) for v in self.std]
        if self.task_dir is not None:
            self.task_dir = Path(self.task_dir)

    @property
    def num_classes(self) -> int:
        """Number of classes (0 for regression)."""
        return len(self.class_names)

    @property
    def target(self) -> Modality:
        """The modality models of this task predict (``CLASS`` for classification, ...)."""
        return self.task_type.target

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable view; :meth:`from_dict` inverts it."""
        return {
            "name": self.name,
            "task_type": self.task_type.value,
            "modalities": [m.value for m in self.modalities],
            "class_names": list(self.class_names),
            "num_samples": self.num_samples,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "mean": list(self.mean),
            "std": list(self.std),
            "task_dir": None if self.task_dir is None else str(self.task_dir),
            "paths": to_plain(self.paths),
            "description": self.description,
            "license": self.license,
            "keywords": list(self.keywords),
            "num_folds": self.num_folds,
            "num_test": self.num_test,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskStruct:
        """Rebuild a struct from :meth:`to_dict` output (unknown keys are rejected by name)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"TaskStruct.from_dict: unknown keys {sorted(unknown)}")
        kwargs = dict(data)
        kwargs["paths"] = dict(kwargs.get("paths") or {})
        return cls(**kwargs)
