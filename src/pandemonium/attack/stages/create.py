"""Create stages: operations on the patch batch ``(B, C, h, w)`` before it is implanted.

This module holds :class:`CreateStage` (the shared base) and the geometric stages (resize, channel
stack, tile, scroll, translate); the frequency-domain stages live in
:mod:`pandemonium.attack.stages.frequency` and print simulation in
:mod:`pandemonium.attack.stages.softproof`.

Every stage is one class with plain-data ``params``; random stages draw through
:meth:`~pandemonium.attack.stages.base.PipelineBase.sample_params` so ``forward(x, params=sample)``
replays them exactly. "Train only" stages are the identity when ``evaluate=True`` (they model
uncertainty we want the patch to be robust to, not a condition we evaluate under); "eval only"
stages are the identity in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from pandemonium.attack.stages.base import PipelineBase, StageError
from pandemonium.attack.stages.registry import register_stage

__all__ = ["ChannelStack", "CreateStage", "RandomScroll", "ReflectPadTranslate", "Resize", "Tile"]


class CreateStage(PipelineBase):
    """Base of the create stages: 4-D input check and a TensorBoard image of the incoming patches.

    Not registered itself; a subclass sets ``name`` and decorates itself with ``@register_stage``.
    """

    role = "create"

    def _check_4d(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise StageError(
                f"stage {self.name!r}: expected a patch batch (B, C, h, w), got shape {tuple(x.shape)}"
            )

    def log_vizualizations(self, x, x_control, writer, step, logging_to_mlflow=False) -> None:
        if isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] in (1, 3):
            writer.add_images(f"{self.name}/input", x[:4].detach().clamp(0, 1).cpu(), global_step=step)


def _gather_shift(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``out[b, c, i, j] = x[b, c, rows[b, i], cols[b, j]]`` -- a batched, per-sample crop/roll."""
    batch, channels = x.shape[:2]
    x = x.gather(2, rows[:, None, :, None].expand(batch, channels, rows.shape[1], x.shape[3]))
    return x.gather(3, cols[:, None, None, :].expand(batch, channels, rows.shape[1], cols.shape[1]))


# ----------------------------------------------------------------------------- deterministic
@register_stage
class Resize(CreateStage):
    """Resize the patch to ``size`` (int: square, or ``[h, w]``) with ``F.interpolate``."""

    name = "Resize"

    def __init__(
        self, size: int | Sequence[int], mode: str = "bilinear", keys: Sequence[str] | None = None
    ) -> None:
        super().__init__(keys=keys)
        size_list = [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]
        if len(size_list) != 2 or min(size_list) <= 0:
            raise StageError(f"stage 'Resize': size must be a positive int or [h, w], got {size!r}")
        if mode not in ("nearest", "bilinear", "bicubic", "area"):
            raise StageError(f"stage 'Resize': unknown mode {mode!r}")
        self.size, self.mode = tuple(size_list), mode
        self.params = {"size": size_list, "mode": mode, "keys": self.keys}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if self.mode in ("bilinear", "bicubic"):
            return F.interpolate(x, size=self.size, mode=self.mode, align_corners=False)
        return F.interpolate(x, size=self.size, mode=self.mode)


@register_stage
class ChannelStack(CreateStage):
    """Repeat a 1-channel (grey) patch to ``channels`` channels; other inputs with that many pass through."""

    name = "ChannelStack"

    def __init__(self, channels: int = 3, keys: Sequence[str] | None = None) -> None:
        super().__init__(keys=keys)
        self.channels = int(channels)
        self.params = {"channels": self.channels, "keys": self.keys}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if x.shape[1] == self.channels:
            return x
        if x.shape[1] != 1:
            raise StageError(
                f"stage 'ChannelStack': expected 1 or {self.channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        return x.expand(-1, self.channels, -1, -1)


@register_stage
class Tile(CreateStage):
    """Repeat the patch ``reps = [ry, rx]`` times vertically / horizontally (a larger periodic patch)."""

    name = "Tile"

    def __init__(self, reps: int | Sequence[int] = 2, keys: Sequence[str] | None = None) -> None:
        super().__init__(keys=keys)
        reps_list = [int(reps), int(reps)] if isinstance(reps, (int, float)) else [int(r) for r in reps]
        if len(reps_list) != 2 or min(reps_list) < 1:
            raise StageError(f"stage 'Tile': reps must be a positive int or [ry, rx], got {reps!r}")
        self.reps = tuple(reps_list)
        self.params = {"reps": reps_list, "keys": self.keys}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        return x.repeat(1, 1, self.reps[0], self.reps[1])


# ----------------------------------------------------------------------------- random geometry
@register_stage
class RandomScroll(CreateStage):
    """Train only: roll each patch by a random ``(dy, dx)`` with wrap-around (for tileable patches).

    Sampled: ``shift_0`` (rows), ``shift_1`` (columns), integers in ``[0, h)`` / ``[0, w)``.
    """

    name = "RandomScroll"

    def __init__(self, keys: Sequence[str] | None = None) -> None:
        super().__init__(keys=keys)
        self.params = {"keys": self.keys}

    def sample_params(self, batch_shape, device, evaluate=False) -> dict[str, Tensor]:
        if evaluate:
            return {}
        batch, _, height, width = batch_shape
        dy = self.randint(0, height, (batch,), device)
        dx = self.randint(0, width, (batch,), device)
        return {"shift": torch.stack([dy, dx], dim=1)}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if "shift" not in params:
            return x
        _, _, height, width = x.shape
        shift = params["shift"].to(x.device)
        rows = (torch.arange(height, device=x.device)[None, :] - shift[:, :1]) % height
        cols = (torch.arange(width, device=x.device)[None, :] - shift[:, 1:]) % width
        return _gather_shift(x, rows, cols)


@register_stage
class ReflectPadTranslate(CreateStage):
    """Train only: translate each patch by up to ``max_shift`` pixels, filling with reflection.

    Sampled: ``offset_0`` / ``offset_1`` (rows / columns), integers in ``[-max_shift, max_shift]``.
    """

    name = "ReflectPadTranslate"

    def __init__(self, max_shift: int = 2, keys: Sequence[str] | None = None) -> None:
        super().__init__(keys=keys)
        if int(max_shift) < 0:
            raise StageError(f"stage 'ReflectPadTranslate': max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)
        self.params = {"max_shift": self.max_shift, "keys": self.keys}

    def sample_params(self, batch_shape, device, evaluate=False) -> dict[str, Tensor]:
        if evaluate:
            return {}
        return {"offset": self.randint(-self.max_shift, self.max_shift + 1, (batch_shape[0], 2), device)}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if "offset" not in params or self.max_shift == 0:
            return x
        m = self.max_shift
        _, _, height, width = x.shape
        if m >= min(height, width):
            raise StageError(
                f"stage 'ReflectPadTranslate': max_shift={m} must be smaller than the patch ({height}x{width})"
            )
        padded = F.pad(x, (m, m, m, m), mode="reflect")
        offset = params["offset"].to(x.device)
        rows = torch.arange(height, device=x.device)[None, :] + m - offset[:, :1]
        cols = torch.arange(width, device=x.device)[None, :] + m - offset[:, 1:]
        return _gather_shift(padded, rows, cols)
