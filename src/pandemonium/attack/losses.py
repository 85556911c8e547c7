"""Patch losses: each returns a dict of **unreduced, per-sample** terms ``{name: Tensor(B)}``.

Every term is something to *minimise*. The trainer optimises ``sum_k w_k * terms[k].mean()`` over the
terms that have a weight (:func:`weighted_total`) and logs the others as metrics.

Where a loss finds its inputs (all passed as keyword arguments by the pipeline / trainer):

* ``outputs`` -- the model stage's output (logits ``(B, C)``, segmentation logits ``(B, C, H, W)`` or
  the detector dict ``{"boxes", "objectness", "class_scores"}`` of DEVELOPERS.md);
* ``kwargs["targets"]`` -- targets of the drawn images, put there by the implanter
  (``"class"``: ``(B,)``, ``"mask"``: ``(B, H, W)``, ...);
* ``kwargs["patch"]`` -- the patch image(s) for regularisers: ``(C, h, w)``, ``(B, C, h, w)`` or a
  dict of those (several patches: the terms are summed). An unbatched patch gives the same value for
  every sample (broadcast to B, so every term still has shape ``(B,)``).

>>> loss = CompositeLoss([ClassificationUntargeted(), TotalVariation()])    # doctest: +SKIP
>>> terms = loss(logits, targets={"class": labels}, patch=patch)           # {"untargeted": (B,), "tv": (B,)}
>>> total = weighted_total(terms, {"untargeted": 1.0, "tv": 2.5})
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pandemonium.errors import PandemoniumError

__all__ = [
    "ClassificationTargeted",
    "ClassificationUntargeted",
    "CompositeLoss",
    "DetectionClassFlip",
    "DetectionDisappearance",
    "LossError",
    "NonPrintabilityScore",
    "PatchLoss",
    "Saliency",
    "SegmentationPixelFlip",
    "TotalVariation",
    "assert_finite",
    "check_terms",
    "find_nonfinite",
    "weighted_total",
]


class LossError(PandemoniumError, ValueError):
    """A loss broke its contract or got unusable input; the message names the loss and the term."""


# ----------------------------------------------------------------------------- contract helpers
def check_terms(loss_name: str, terms: Any, batch_size: int | None = None) -> None:
    """Raise :class:`LossError` unless ``terms`` is ``{str: Tensor(B)}`` with one common B."""
    if not isinstance(terms, Mapping) or not terms:
        raise LossError(
            f"loss {loss_name!r} must return a non-empty dict of per-sample tensors, got {type(terms).__name__}"
        )
    for term, value in terms.items():
        if not isinstance(value, Tensor):
            raise LossError(f"loss {loss_name!r}: term {term!r} is a {type(value).__name__}, not a tensor")
        if value.dim() != 1:
            hint = (
                " (a scalar: do not reduce over the batch -- return one value per sample)"
                if value.dim() == 0
                else ""
            )
            raise LossError(
                f"loss {loss_name!r}: term {term!r} has shape {tuple(value.shape)}; expected per-sample shape "
                f"(B,){hint}"
            )
        if batch_size is not None and value.shape[0] != batch_size:
            raise LossError(
                f"loss {loss_name!r}: term {term!r} has {value.shape[0]} values; expected batch size {batch_size}"
            )
        batch_size = value.shape[0]


def find_nonfinite(terms: Mapping[str, Tensor]) -> dict[str, list[int]]:
    """``{term: [sample indices]}`` of NaN / inf values (empty when all are finite)."""
    found: dict[str, list[int]] = {}
    for term, value in terms.items():
        bad = ~torch.isfinite(value.detach())
        if bool(bad.any()):
            found[term] = torch.nonzero(bad.flatten()).flatten().tolist()
    return found


def assert_finite(terms: Mapping[str, Tensor], where: str = "loss") -> None:
    """Raise :class:`LossError` naming the terms and samples that are NaN / inf."""
    found = find_nonfinite(terms)
    if found:
        details = "; ".join(f"{term}: samples {idx[:10]}" for term, idx in found.items())
        raise LossError(f"{where}: non-finite values (NaN/inf) in {details}")


def weighted_total(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """``sum_k w_k * terms[k].mean()``; unknown weight names raise an error listing the terms."""
    unknown = [name for name in weights if name not in terms]
    if unknown:
        raise LossError(f"weights name unknown loss terms {unknown}; available terms: {sorted(terms)}")
    if not weights:
        raise LossError(f"no loss term has a weight; available terms: {sorted(terms)}")
    total = None
    for name, weight in weights.items():
        contribution = float(weight) * terms[name].mean()
        total = contribution if total is None else total + contribution
    return total


def _targets(loss: PatchLoss, kwargs: Mapping[str, Any], key: str) -> Tensor:
    targets = kwargs.get("targets")
    if not isinstance(targets, Mapping) or key not in targets:
        available = sorted(targets) if isinstance(targets, Mapping) else "no kwargs['targets']"
        raise LossError(
            f"loss {loss.name!r} needs kwargs['targets'][{key!r}] (put there by the implanter); available: {available}"
        )
    return targets[key]


# ----------------------------------------------------------------------------- base
class PatchLoss(nn.Module):
    """Base class: ``loss(outputs, **kwargs) -> {term: Tensor(B)}``; :attr:`terms` lists the names.

    Subclasses set ``term_names`` (or override :attr:`terms`) and implement :meth:`forward`. Losses are
    ``nn.Module``s so tables (e.g. printable colours) move with ``.to(device)``.
    """

    name: str = "PatchLoss"
    term_names: tuple[str, ...] = ()

    @property
    def terms(self) -> list[str]:
        return list(self.term_names)

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"terms={self.terms}"


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
            labels = _targets(self, kwargs, "class").to(logits.device).long().view(-1)
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
            labels = _targets(self, kwargs, "mask").to(logits.device).long()
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


# ----------------------------------------------------------------------------- regularisers on the patch
class _PatchRegulariser(PatchLoss):
    """Computes a value per patch image and broadcasts to the batch size of ``outputs``."""

    def __init__(self, patch_key: str = "patch", term: str = "reg") -> None:
        super().__init__()
        self.patch_key, self.term_names = patch_key, (term,)

    def per_patch(self, patch: Tensor) -> Tensor:  # (N, C, h, w) -> (N,)
        raise NotImplementedError

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:
        if self.patch_key not in kwargs:
            raise LossError(
                f"loss {self.name!r} needs the patch in kwargs[{self.patch_key!r}]; got kwargs {sorted(kwargs)}"
            )
        patches = kwargs[self.patch_key]
        patches = patches if isinstance(patches, Mapping) else {"patch": patches}
        batch = _batch_size(outputs)
        total = None
        for key, patch in patches.items():
            if patch.dim() == 3:
                patch = patch[None]
            if patch.dim() != 4:
                raise LossError(
                    f"loss {self.name!r}: patch {key!r} has shape {tuple(patch.shape)}; expected (C,h,w) or (B,C,h,w)"
                )
            value = self.per_patch(patch)
            if value.shape[0] == 1 and batch is not None:
                value = value.expand(batch)
            elif batch is not None and value.shape[0] != batch:
                raise LossError(
                    f"loss {self.name!r}: patch {key!r} batch {value.shape[0]} != outputs batch {batch}"
                )
            total = value if total is None else total + value
        return {self.term_names[0]: total}


def _batch_size(outputs: Any) -> int | None:
    if isinstance(outputs, Tensor):
        return outputs.shape[0]
    if isinstance(outputs, Mapping):
        for value in outputs.values():
            size = _batch_size(value)
            if size is not None:
                return size
    return None


class TotalVariation(_PatchRegulariser):
    """Mean absolute difference between neighbouring pixels (anisotropic TV), per patch."""

    name = "TotalVariation"

    def __init__(self, patch_key: str = "patch", term: str = "tv") -> None:
        super().__init__(patch_key, term)

    def per_patch(self, patch: Tensor) -> Tensor:
        dy = (patch[..., 1:, :] - patch[..., :-1, :]).abs().mean(dim=(1, 2, 3))
        dx = (patch[..., :, 1:] - patch[..., :, :-1]).abs().mean(dim=(1, 2, 3))
        return dy + dx


# a small generic table (RGB in [0, 1]) of colours most CMYK office printers reproduce well
DEFAULT_PRINTABLE_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (0.75, 0.75, 0.75),
    (0.0, 0.6, 0.85), (0.9, 0.0, 0.5), (1.0, 0.9, 0.0), (0.85, 0.1, 0.1), (0.1, 0.55, 0.25),
    (0.15, 0.2, 0.55), (0.95, 0.55, 0.1), (0.5, 0.25, 0.1), (0.55, 0.3, 0.6), (0.6, 0.8, 0.3),
    (0.95, 0.75, 0.65), (0.4, 0.7, 0.75), (0.7, 0.55, 0.35), (0.3, 0.35, 0.2), (0.9, 0.85, 0.7),
)  # fmt: skip


class NonPrintabilityScore(_PatchRegulariser):
    """Mean over pixels of the distance to the nearest printable colour (Sharif et al., 2016).

    ``colors``: ``None`` (a small built-in table), a list of RGB triples in [0, 1], or a path to a text
    / CSV file with one ``r, g, b`` row per colour (0..1, or 0..255 if any value exceeds 1).
    """

    name = "NonPrintabilityScore"

    def __init__(
        self,
        colors: Sequence[Sequence[float]] | str | Path | None = None,
        patch_key: str = "patch",
        term: str = "nps",
    ) -> None:
        super().__init__(patch_key, term)
        table = self._load(colors)
        self.register_buffer("colors", torch.as_tensor(table, dtype=torch.float32))

    def _load(self, colors: Any) -> np.ndarray:
        if colors is None:
            return np.asarray(DEFAULT_PRINTABLE_COLORS, dtype=np.float32)
        if isinstance(colors, (str, Path)):
            path = Path(colors)
            if not path.is_file():
                raise LossError(f"loss {self.name!r}: printable-colour file {str(path)!r} does not exist")
            try:
                table = np.loadtxt(path, delimiter="," if path.suffix == ".csv" else None, ndmin=2)
            except ValueError as err:
                raise LossError(
                    f"loss {self.name!r}: cannot parse printable colours in {str(path)!r}: {err}"
                ) from err
        else:
            table = np.asarray(colors, dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != 3 or table.shape[0] == 0:
            raise LossError(
                f"loss {self.name!r}: printable colours must be an (N, 3) RGB table, got shape {table.shape}"
            )
        if table.max() > 1.0:
            table = table / 255.0
        return table.astype(np.float32)

    def per_patch(self, patch: Tensor) -> Tensor:
        if patch.shape[1] != 3:
            raise LossError(f"loss {self.name!r} needs RGB patches, got {patch.shape[1]} channels")
        pixels = patch.permute(0, 2, 3, 1)[..., None, :]  # (N, h, w, 1, 3)
        colors = self.colors.to(patch.dtype)
        distance = ((pixels - colors) ** 2).sum(dim=-1).add(1e-12).sqrt()  # (N, h, w, K)
        return distance.min(dim=-1).values.mean(dim=(1, 2))


class Saliency(_PatchRegulariser):
    """High-frequency energy: mean squared response of a 3x3 Laplacian over interior pixels, per patch.

    Penalises fine, eye-catching texture (the part of a patch a printer blurs and a human notices
    first). Unlike :class:`TotalVariation` (first differences, L1) it measures curvature (second
    differences, L2), so smooth gradients cost nothing.
    """

    name = "Saliency"

    def __init__(self, patch_key: str = "patch", term: str = "saliency") -> None:
        super().__init__(patch_key, term)
        kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("kernel", kernel[None, None])

    def per_patch(self, patch: Tensor) -> Tensor:
        channels = patch.shape[1]
        kernel = self.kernel.to(patch.dtype).expand(channels, 1, 3, 3)
        if min(patch.shape[-2:]) < 3:
            raise LossError(
                f"loss {self.name!r} needs patches of at least 3x3 px, got {tuple(patch.shape[-2:])}"
            )
        # interior pixels only: any padding would invent curvature at the border
        response = F.conv2d(patch, kernel, groups=channels)
        return (response**2).mean(dim=(1, 2, 3))


# ----------------------------------------------------------------------------- composition
class CompositeLoss(PatchLoss):
    """Several losses at once; their term dicts are merged (term names must be unique)."""

    name = "CompositeLoss"

    def __init__(self, losses: Sequence[PatchLoss] | Mapping[str, PatchLoss]) -> None:
        super().__init__()
        items = list(losses.values()) if isinstance(losses, Mapping) else list(losses)
        if not items:
            raise LossError("CompositeLoss needs at least one loss")
        owner: dict[str, str] = {}
        for loss in items:
            if not callable(loss):
                raise LossError(f"CompositeLoss: {loss!r} is not callable")
            for term in getattr(loss, "terms", []):
                if term in owner:
                    raise LossError(
                        f"CompositeLoss: term {term!r} is produced by both {owner[term]!r} and "
                        f"{getattr(loss, 'name', type(loss).__name__)!r}; give one of them another term= name"
                    )
                owner[term] = getattr(loss, "name", type(loss).__name__)
        self.losses = nn.ModuleList([loss for loss in items if isinstance(loss, nn.Module)])
        self._callables = items

    @property
    def terms(self) -> list[str]:
        return [t for loss in self._callables for t in getattr(loss, "terms", [])]

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, Tensor]:
        merged: dict[str, Tensor] = {}
        for loss in self._callables:
            name = getattr(loss, "name", type(loss).__name__)
            terms = loss(outputs, **kwargs)
            check_terms(name, terms)
            for term, value in terms.items():
                if term in merged:
                    raise LossError(f"CompositeLoss: term {term!r} returned twice (second time by {name!r})")
                merged[term] = value
        return merged
