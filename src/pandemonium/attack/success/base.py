"""The contract every success metric keeps, torchmetrics-style: tiny, and checked by one harness.

A success metric scores one **arm** of an evaluation batch (the patched images, or a baseline: no
patch, a random-noise patch, a grey patch) under the same conditions as the control (no patch):

- input: :class:`SuccessInputs` (the arm's model outputs, the control outputs, the ground truth of
  the drawn scenes, the patch mask, the target class);
- output: ``{rate_name: RowCounts}``, per **row** ``hits`` and ``trials`` (the rate's numerator and
  denominator, each ``(B,)``), so a rate is ``sum(hits) / sum(trials)`` over any set of rows and a
  bootstrap can resample scenes (:mod:`pandemonium.attack.statistics`). A row with ``trials == 0``
  is not eligible (e.g. the control already misclassifies it).

Metric names never equal a loss term's name (``untargeted``, ``targeted``, ``disappearance``,
``class_flip``, ``pixel_flip``, ``reg``, ``tv``, ``nps``): a logged loss is never mistaken for a rate.

Example:
    >>> import torch
    >>> from pandemonium.attack.success import ClassificationSuccess
    >>> logits = torch.eye(3)[[0, 1, 2]] * 5
    >>> inputs = SuccessInputs(outputs=logits.flip(0), control=logits, targets={"class": torch.tensor([0, 1, 2])})
    >>> counts = ClassificationSuccess()(inputs)["untargeted_success"]
    >>> counts.hits.tolist(), counts.trials.tolist()
    ([1.0, 0.0, 1.0], [1.0, 1.0, 1.0])
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pandemonium.errors import PandemoniumError

__all__ = ["LOSS_TERM_NAMES", "RowCounts", "SuccessInputs", "SuccessMetric", "SuccessMetricError",
           "check_success_metric", "patch_region"]

#: the default term names of the built-in losses (``pandemonium.attack.losses``): no metric may use one
LOSS_TERM_NAMES = frozenset({"untargeted", "targeted", "disappearance", "class_flip", "pixel_flip", "reg", "tv",
                             "nps", "total"})


class SuccessMetricError(PandemoniumError, ValueError):
    """A success metric got unusable input or broke its contract; the message names the metric."""


@dataclass(frozen=True)
class RowCounts:
    """Per-row numerator (``hits``) and denominator (``trials``) of one rate, float arrays ``(B,)``."""

    hits: np.ndarray
    trials: np.ndarray

    @classmethod
    def of(cls, hits: Any, trials: Any) -> RowCounts:
        as_np = lambda v: (v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor)  # noqa: E731
                           else np.asarray(v, dtype=np.float64)).astype(np.float64).reshape(-1)
        return cls(as_np(hits), as_np(trials))

    @property
    def rate(self) -> float:
        """``sum(hits) / sum(trials)`` (NaN without trials)."""
        total = float(self.trials.sum())
        return float(self.hits.sum() / total) if total > 0 else float("nan")

    def per_row(self) -> np.ndarray:
        """``hits / trials`` per row, NaN where the row has no trials."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.trials > 0, self.hits / np.where(self.trials > 0, self.trials, 1.0), np.nan)


@dataclass(frozen=True)
class SuccessInputs:
    """One evaluation batch as a metric sees it.

    ``outputs``: the scored arm's model outputs; ``control``: the outputs without a patch under the
    same conditions; ``targets``: the drawn scenes' ground truth (``class``, ``mask``, ``boxes``,
    ``labels``, ``patch_boxes``, …); ``patch_mask``: the patch coverage ``(B, 1, H, W)`` or
    ``(B, H, W)`` (any value > 0 counts as patch); ``target_class`` for targeted attacks.
    """

    outputs: Any
    control: Any
    targets: Mapping[str, Any] = field(default_factory=dict)
    patch_mask: torch.Tensor | None = None
    target_class: int | None = None


def patch_region(mask: torch.Tensor | None, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The patch area as a bool ``(B, H, W)`` tensor (all False without a mask)."""
    if mask is None:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask, device=device)
    if mask.ndim == len(shape) + 1:
        mask = mask.amax(dim=1)  # (B, 1, H, W) coverage or one channel per patch
    if tuple(mask.shape) != tuple(shape):
        raise SuccessMetricError(f"patch mask has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask > 0


class SuccessMetric(ABC):
    """Base class: ``metric(inputs) -> {name: RowCounts}`` with the names in :attr:`names`.

    Subclasses set ``names`` and implement :meth:`__call__`; a task type names its metric in
    ``TaskTypeSpec.success_metric``. Dataset-level figures
    that are not ratios of per-row counts (e.g. mAP) come from :meth:`dataset_level` (optional).
    """

    names: tuple[str, ...] = ()
    #: families of rates whose names are only known from the data (e.g. one IoU per class: ``iou_outside.c3``)
    prefixes: tuple[str, ...] = ()

    @classmethod
    def with_thresholds(cls, conf_threshold: float = 0.5, iou_threshold: float = 0.5) -> SuccessMetric:
        """The metric under an evaluation's score / IoU thresholds (metrics without thresholds ignore them)."""
        return cls()

    def declares(self, key: str) -> bool:
        """Whether ``key`` is one of this metric's rates."""
        return key in self.names or key.startswith(self.prefixes)

    @abstractmethod
    def __call__(self, inputs: SuccessInputs) -> dict[str, RowCounts]:
        """Per-row counts of every rate in :attr:`names` for one batch."""

    def headline(self, target_class: int | None = None) -> str:
        """The rate that measures attack success (the best-patch / CLI headline metric)."""
        return self.names[0]


def check_success_metric(metric: SuccessMetric, inputs: SuccessInputs) -> dict[str, RowCounts]:
    """Assert the success-metric contract on one batch and return the metric's output.

    Checks: names declared and disjoint from loss terms; exactly those names returned (a subset when
    the inputs lack what a rate needs); per-row arrays of the batch size; finite, ``trials >= 0``,
    ``0 <= hits <= trials``; the same answer twice (no hidden state); scoring the control against
    itself is well formed too.
    """
    name = type(metric).__name__
    if not metric.names:
        raise AssertionError(f"{name}: declares no rate names")
    clash = set(metric.names) & LOSS_TERM_NAMES
    if clash:
        raise AssertionError(f"{name}: rate name(s) {sorted(clash)} equal a loss term's name")
    out = metric(inputs)
    again = metric(inputs)
    batch = _batch_size(inputs.control)
    for key, counts in out.items():
        if not metric.declares(key):
            raise AssertionError(f"{name}: returned {key!r}, not among its names {metric.names} / {metric.prefixes}")
        if not isinstance(counts, RowCounts):
            raise AssertionError(f"{name}: {key!r} is a {type(counts).__name__}, not RowCounts")
        for part in ("hits", "trials"):
            arr = getattr(counts, part)
            if arr.shape != (batch,):
                raise AssertionError(f"{name}: {key}.{part} has shape {arr.shape}, expected ({batch},)")
            if not np.all(np.isfinite(arr)):
                raise AssertionError(f"{name}: {key}.{part} has non-finite values")
        if np.any(counts.trials < 0) or np.any(counts.hits < 0) or np.any(counts.hits > counts.trials + 1e-9):
            raise AssertionError(f"{name}: {key} breaks 0 <= hits <= trials")
        if not (np.array_equal(counts.hits, again[key].hits) and np.array_equal(counts.trials, again[key].trials)):
            raise AssertionError(f"{name}: {key} differs between two identical calls")
    control_only = SuccessInputs(inputs.control, inputs.control, inputs.targets, inputs.patch_mask,
                                 inputs.target_class)
    if set(metric(control_only)) != set(out):
        raise AssertionError(f"{name}: scoring the control returns other rates than scoring the patched arm")
    return out


def _batch_size(outputs: Any) -> int:
    if isinstance(outputs, Mapping):
        return int(next(iter(outputs.values())).shape[0])
    return int(outputs.shape[0])
