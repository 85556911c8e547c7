"""Task losses: push a classifier, detector or segmenter away from the truth (or towards a target)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pandemonium.attack.losses.base import LossError, PatchLoss, required_target

__all__ = ["ClassificationTargeted", "ClassificationUntargeted", "DetectionClassFlip", "DetectionDisappearance",
           "SegmentationPixelFlip"]


def _logits(loss: PatchLoss, outputs: Any, dims: int) -> Tensor:
    if not isinstance(outputs, Tensor) or outputs.dim() != dims:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise LossError(f"loss {loss.name!r} expects logits with {dims} dims, got {shape}")
    return outputs


# ----------------------------------------------------------------------------- classification
class ClassificationUntargeted(PatchLoss):
    """Push the true class down. ``mode="logprob"``: term = log p(true class) (-> -inf as the model
    is fooled); ``mode="margin"``: term = logit_true - max other logit, clamped below at ``-kappa``
    (C&W style: stop pushing once wrong by a margin).

    True labels come from ``kwargs["targets"]["class"]`` or the fixed ``true_class``.
    """

    name = "ClassificationUntargeted"

    def __init__(
        self,
        mode: str = "logprob",
        kappa: float = 5.0,
        true_class: int | None = None,
        term: str = "untargeted",
    ) -> None:
        super().__init__()
        if mode not in ("logprob", "margin"):
            raise LossError(f"loss {self.name!r}: mode must be 'logprob' or 'margin', got {mode!r}")
        self.mode, self.kappa, self.true_class, self.term_names = mode, float(kappa), true_class, (term,)

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:
        logits = _logits(self, outputs, 2)
        if self.true_class is not None:
            labels = torch.full(
                (logits.shape[0],), int(self.true_class), device=logits.device, dtype=torch.long
            )
        else:
            labels = required_target(self, kwargs, "class").to(logits.device).long().view(-1)
        if self.mode == "logprob":
            value = logits.log_softmax(dim=1).gather(1, labels[:, None])[:, 0]
        else:
            true = logits.gather(1, labels[:, None])[:, 0]
            others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
            value = (true - others.max(dim=1).values).clamp(min=-self.kappa)
        return {self.term_names[0]: value}


class ClassificationTargeted(PatchLoss):
    """Pull every sample towards ``target_class``: term = cross-entropy to that class."""

    name = "ClassificationTargeted"

    def __init__(self, target_class: int, term: str = "targeted") -> None:
        super().__init__()
        self.target_class, self.term_names = int(target_class), (term,)

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:
        logits = _logits(self, outputs, 2)
        if not 0 <= self.target_class < logits.shape[1]:
            raise LossError(
                f"loss {self.name!r}: target_class {self.target_class} not in [0, {logits.shape[1]})"
            )
        target = torch.full((logits.shape[0],), self.target_class, device=logits.device, dtype=torch.long)
        return {self.term_names[0]: F.cross_entropy(logits, target, reduction="none")}


# ----------------------------------------------------------------------------- detection
def _detections(loss: PatchLoss, outputs: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(outputs, Mapping) or "objectness" not in outputs or "class_scores" not in outputs:
        got = sorted(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
        raise LossError(
            f"loss {loss.name!r} expects detector outputs {{'boxes', 'objectness', 'class_scores'}} "
            f"(use ModelStage(adapter=...)); got {got}"
        )
    objectness, scores = outputs["objectness"], outputs["class_scores"]
    if objectness.dim() != 2 or scores.dim() != 3:
        raise LossError(
            f"loss {loss.name!r}: objectness must be (B, N) and class_scores (B, N, C); got "
            f"{tuple(objectness.shape)} and {tuple(scores.shape)}"
        )
    return objectness, scores


class DetectionDisappearance(PatchLoss):
    """Make objects vanish: term = max over detections of objectness x class score per image.

    ``class_index=None`` uses the best class score of each detection; ``score="objectness"`` ignores
    class scores.
    """

    name = "DetectionDisappearance"

    def __init__(
        self, class_index: int | None = None, score: str = "obj_cls", term: str = "disappearance"
    ) -> None:
        super().__init__()
        if score not in ("obj_cls", "objectness"):
            raise LossError(f"loss {self.name!r}: score must be 'obj_cls' or 'objectness', got {score!r}")
        self.class_index, self.score, self.term_names = class_index, score, (term,)

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:
        objectness, scores = _detections(self, outputs)
        if objectness.shape[1] == 0:
            return {self.term_names[0]: objectness.new_zeros(objectness.shape[0])}
        if self.score == "objectness":
            value = objectness
        elif self.class_index is None:
            value = objectness * scores.max(dim=-1).values
        else:
            value = objectness * scores[..., int(self.class_index)]
        return {self.term_names[0]: value.max(dim=1).values}


class DetectionClassFlip(PatchLoss):
    """Relabel detections of ``source_class`` as ``target_class``.

    Term = sum_n w_n * (-log p_n(target)) / sum_n w_n per image, with weights
    ``w_n = objectness_n * p_n(source)`` (the detections that are the source object). ``source_class``
    None weights all detections by objectness.
    """

    name = "DetectionClassFlip"

    def __init__(self, target_class: int, source_class: int | None = None, term: str = "class_flip") -> None:
        super().__init__()
        self.target_class, self.source_class, self.term_names = int(target_class), source_class, (term,)

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:
        objectness, scores = _detections(self, outputs)
        weights = (
            objectness if self.source_class is None else objectness * scores[..., int(self.source_class)]
        )
        nll = -torch.log(scores[..., self.target_class].clamp_min(1e-8))
        value = (weights * nll).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-8)
        return {self.term_names[0]: value}


# ----------------------------------------------------------------------------- segmentation
class SegmentationPixelFlip(PatchLoss):
    """Per-pixel flip averaged per sample within a region.

    Targeted (``target_class`` given): term = mean pixel cross-entropy to ``target_class``.
    Untargeted: term = mean pixel log p(true class), true mask from ``kwargs["targets"]["mask"]``
    (pixels equal to ``ignore_index`` are skipped). ``region_key``: a kwargs entry holding a
    ``(B, 1, H, W)`` or ``(B, H, W)`` weight mask, looked up in kwargs and then in ``kwargs["targets"]``
    (e.g. ``"patch_mask"``, where the implanter put the patch);
    None: the whole image.
    """

    name = "SegmentationPixelFlip"

    def __init__(
        self,
        target_class: int | None = None,
        region_key: str | None = None,
        ignore_index: int = 255,
        term: str = "pixel_flip",
    ) -> None:
        super().__init__()
        self.target_class, self.region_key, self.ignore_index = target_class, region_key, int(ignore_index)
        self.term_names = (term,)

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:
        logits = _logits(self, outputs, 4)
        batch, _, height, width = logits.shape
        weights = torch.ones((batch, height, width), device=logits.device, dtype=logits.dtype)
        if self.region_key is not None:
            targets = kwargs.get("targets") if isinstance(kwargs.get("targets"), Mapping) else {}
            if self.region_key in kwargs:
                region = kwargs[self.region_key]
            elif self.region_key in targets:
                region = targets[self.region_key]  # e.g. the implanter's targets["patch_mask"]
            else:
                raise LossError(
                    f"loss {self.name!r}: region_key {self.region_key!r} is neither in kwargs {sorted(kwargs)} "
                    f"nor in kwargs['targets'] {sorted(targets)}"
                )
            region = region.to(device=logits.device, dtype=logits.dtype)
            region = region[:, 0] if region.dim() == 4 else region
            if tuple(region.shape) != (batch, height, width):
                raise LossError(
                    f"loss {self.name!r}: region {self.region_key!r} has shape {tuple(region.shape)}, "
                    f"expected ({batch}, {height}, {width})"
                )
            weights = weights * region
        log_probs = logits.log_softmax(dim=1)
        if self.target_class is not None:
            labels = torch.full(
                (batch, height, width), int(self.target_class), device=logits.device, dtype=torch.long
            )
            pixel = -log_probs.gather(1, labels[:, None])[:, 0]
        else:
            labels = required_target(self, kwargs, "mask").to(logits.device).long()
            if tuple(labels.shape) != (batch, height, width):
                raise LossError(
                    f"loss {self.name!r}: mask shape {tuple(labels.shape)} != logits {(batch, height, width)}"
                )
            valid = labels != self.ignore_index
            weights = weights * valid
            pixel = log_probs.gather(1, labels.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
        return {
            self.term_names[0]: (pixel * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp_min(1e-8)
        }
