"""Patch parameterisations: ``nn.Module``s whose ``forward()`` returns the patch image ``(C, h, w)`` in [0, 1].

* :class:`RawPatch` -- the pixels themselves; call :meth:`RawPatch.project_` after each optimiser step
  to clamp them back into [0, 1].
* :class:`SigmoidPatch` / :class:`TanhPatch` -- an unbounded latent squashed into [0, 1], so no
  projection is needed (and gradients never hit a hard clamp).
* :class:`LowResPatch` -- a low-resolution latent (sigmoid-squashed) bilinearly upsampled: fewer
  parameters and no high-frequency detail a printer or camera would lose anyway.

Initialisation ``init="uniform"`` (from a ``torch.Generator`` seeded with ``seed``), ``"grey"`` (0.5)
or a path to an image file (read with Pillow, resized to the patch size)::

    patch = SigmoidPatch((3, 32, 32), init="uniform", seed=0)
    batch = patch.batch(8)      # (8, 3, 32, 32), gradients flow to the latent
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

__all__ = ["LowResPatch", "PatchParameterisation", "RawPatch", "SigmoidPatch", "TanhPatch", "load_image"]

_EPS = 1e-4  # keeps logit/atanh of 0/1 initial values finite


def load_image(path: str | Path, shape: Sequence[int]) -> Tensor:
    """Image file -> float tensor ``(C, h, w)`` in [0, 1] resized (bilinear) to ``shape``."""
    channels, height, width = (int(s) for s in shape)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"patch init image {str(path)!r} does not exist")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except OSError as err:
        raise ValueError(f"patch init image {str(path)!r} cannot be read: {err}") from err
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)
    if tensor.shape[0] != channels:
        raise ValueError(
            f"patch init image {str(path)!r} gives {tensor.shape[0]} channels, expected {channels}"
        )
    return tensor.contiguous()


def _initial_image(shape: tuple[int, int, int], init: str | Path | float, seed: int) -> Tensor:
    if isinstance(init, (int, float)) and not isinstance(init, bool):
        if not 0.0 <= float(init) <= 1.0:
            raise ValueError(f"constant patch init must be in [0, 1], got {init}")
        return torch.full(shape, float(init))
    if init == "uniform":
        generator = torch.Generator().manual_seed(int(seed))
        return torch.rand(shape, generator=generator)
    if init in ("grey", "gray"):
        return torch.full(shape, 0.5)
    if isinstance(init, (str, Path)) and (Path(init).suffix or Path(init).exists()):
        return load_image(init, shape)
    raise ValueError(
        f"unknown patch init {init!r}; use 'uniform', 'grey', a value in [0, 1] or an image path"
    )


class PatchParameterisation(nn.Module):
    """Base: holds the trainable tensor; ``forward()`` returns the patch ``(C, h, w)`` in [0, 1]."""

    def __init__(self, shape: Sequence[int], init: str | Path | float = "uniform", seed: int = 0) -> None:
        super().__init__()
        if len(shape) != 3 or any(int(s) <= 0 for s in shape):
            raise ValueError(
                f"{type(self).__name__}: shape must be (C, h, w) with positive sizes, got {tuple(shape)}"
            )
        self.shape = tuple(int(s) for s in shape)
        self.init = str(init) if isinstance(init, Path) else init
        self.seed = int(seed)

    @property
    def config(self) -> dict:
        """Plain-data kwargs that rebuild this parameterisation (before training)."""
        return {"shape": list(self.shape), "init": self.init, "seed": self.seed}

    def batch(self, n: int) -> Tensor:
        """The patch expanded to ``(n, C, h, w)`` (a view: gradients accumulate in one parameter)."""
        patch = self()
        return patch.unsqueeze(0).expand(int(n), *patch.shape)

    @torch.no_grad()
    def project_(self) -> None:
        """Keep the parameters valid after an optimiser step (no-op for unbounded latents)."""

    @torch.no_grad()
    def set_image_(self, image: Tensor) -> None:
        """Set the parameters so that ``forward()`` returns (approximately) ``image``."""
        raise NotImplementedError


class RawPatch(PatchParameterisation):
    """The pixels themselves; :meth:`project_` clamps them to [0, 1] after each step."""

    def __init__(self, shape: Sequence[int], init: str | Path | float = "uniform", seed: int = 0) -> None:
        super().__init__(shape, init, seed)
        self.pixels = nn.Parameter(_initial_image(self.shape, init, seed))

    def forward(self) -> Tensor:
        return self.pixels

    @torch.no_grad()
    def project_(self) -> None:
        self.pixels.clamp_(0.0, 1.0)

    @torch.no_grad()
    def set_image_(self, image: Tensor) -> None:
        self.pixels.copy_(image.clamp(0.0, 1.0))


class SigmoidPatch(PatchParameterisation):
    """``sigmoid(latent)``: the latent is unbounded, the image always in (0, 1)."""

    def __init__(self, shape: Sequence[int], init: str | Path | float = "uniform", seed: int = 0) -> None:
        super().__init__(shape, init, seed)
        self.latent = nn.Parameter(self._inverse(_initial_image(self.shape, init, seed)))

    @staticmethod
    def _inverse(image: Tensor) -> Tensor:
        return torch.logit(image.clamp(_EPS, 1 - _EPS))

    def forward(self) -> Tensor:
        return torch.sigmoid(self.latent)

    @torch.no_grad()
    def set_image_(self, image: Tensor) -> None:
        self.latent.copy_(self._inverse(image))


class TanhPatch(SigmoidPatch):
    """``(tanh(latent) + 1) / 2``: like :class:`SigmoidPatch` with twice the slope at 0."""

    @staticmethod
    def _inverse(image: Tensor) -> Tensor:
        return torch.atanh(image.clamp(_EPS, 1 - _EPS) * 2 - 1)

    def forward(self) -> Tensor:
        return (torch.tanh(self.latent) + 1) / 2


class LowResPatch(PatchParameterisation):
    """A ``(C, h/factor, w/factor)`` sigmoid latent, bilinearly upsampled to ``(C, h, w)``."""

    def __init__(
        self, shape: Sequence[int], factor: int = 4, init: str | Path | float = "uniform", seed: int = 0
    ) -> None:
        super().__init__(shape, init, seed)
        if int(factor) < 1:
            raise ValueError(f"LowResPatch: factor must be >= 1, got {factor}")
        self.factor = int(factor)
        channels, height, width = self.shape
        self.low_shape = (
            channels,
            max(1, math.ceil(height / self.factor)),
            max(1, math.ceil(width / self.factor)),
        )
        low = _initial_image(self.low_shape, init, seed) if init == "uniform" else self._downsample(init)
        self.latent = nn.Parameter(torch.logit(low.clamp(_EPS, 1 - _EPS)))

    def _downsample(self, init: str | Path | float) -> Tensor:
        full = _initial_image(self.shape, init, self.seed)
        return F.interpolate(full[None], size=self.low_shape[1:], mode="area")[0]

    @property
    def config(self) -> dict:
        return {**super().config, "factor": self.factor}

    def forward(self) -> Tensor:
        low = torch.sigmoid(self.latent)[None]
        return F.interpolate(low, size=self.shape[1:], mode="bilinear", align_corners=False)[0]

    @torch.no_grad()
    def set_image_(self, image: Tensor) -> None:
        low = F.interpolate(image[None], size=self.low_shape[1:], mode="area")[0]
        self.latent.copy_(torch.logit(low.clamp(_EPS, 1 - _EPS)))
