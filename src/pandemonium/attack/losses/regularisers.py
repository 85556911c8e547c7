"""Regularisers on the patch image itself (smoothness, printability, saliency), one value per patch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pandemonium.attack.losses.base import LossError, PatchLoss

__all__ = ["DEFAULT_PRINTABLE_COLORS", "NonPrintabilityScore", "PatchRegulariser", "Saliency", "TotalVariation"]


# ----------------------------------------------------------------------------- regularisers on the patch
class PatchRegulariser(PatchLoss):
    """Base of regularisers: :meth:`per_patch` gives a value per patch image, broadcast to the batch
    size of ``outputs`` (several patches: summed)."""

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


class TotalVariation(PatchRegulariser):
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


class NonPrintabilityScore(PatchRegulariser):
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


class Saliency(PatchRegulariser):
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
