"""What the trainer optimises: a patch module, and small helpers over patch values.

A patch is a module whose ``forward()`` returns the ``(C, h, w)`` patch (a dict of them for several
patches) and which may offer ``project_()`` to put itself back in range after a step.

>>> import torch
>>> module = as_patch_module((3, 4, 4))          # grey start
>>> float(patch_value(module).mean())
0.5
>>> from pandemonium.attack.rows import expand_patch
>>> expand_patch(patch_value(module), 2).shape
torch.Size([2, 3, 4, 4])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pandemonium.errors import ConfigError

__all__ = [
    "PatchDict",
    "PatchSpecError",
    "TensorPatch",
    "as_patch_module",
    "detached",
    "patch_to_image",
    "patch_value",
    "project_patch_",
]


class PatchSpecError(ConfigError, ValueError):
    """The ``patch`` given to the trainer is not a patch module, tensor, shape or dict of those."""


class TensorPatch(nn.Module):
    """Raw-pixel patch in [0, 1] (used when ``patch`` is a tensor or a shape).

    ``forward()`` returns the ``(C, h, w)`` patch; ``project_()`` clamps it back into [0, 1].
    """

    def __init__(self, init: Tensor) -> None:
        super().__init__()
        self.patch = nn.Parameter(init.detach().clone().float().clamp(0, 1))

    def forward(self) -> Tensor:
        return self.patch

    @torch.no_grad()
    def project_(self) -> None:
        self.patch.clamp_(0.0, 1.0)


class PatchDict(nn.ModuleDict):
    """Several named patches; ``forward()`` returns ``{name: (C, h, w)}``."""

    def forward(self) -> dict[str, Tensor]:
        return {k: m() for k, m in self.items()}


def as_patch_module(patch: Any) -> nn.Module:
    """A patch module from a module, a ``(C, h, w)`` tensor, a ``(C, h, w)`` shape or a dict of those."""
    if isinstance(patch, nn.Module):
        return patch
    if isinstance(patch, Mapping):
        return PatchDict({str(k): as_patch_module(v) for k, v in patch.items()})
    if isinstance(patch, Tensor):
        if patch.ndim != 3:
            raise PatchSpecError(f"PatchTrainer: a patch tensor must be (C, h, w), got shape {tuple(patch.shape)}")
        return TensorPatch(patch)
    if isinstance(patch, (tuple, list)) and len(patch) == 3 and all(isinstance(v, int) for v in patch):
        return TensorPatch(torch.full(tuple(patch), 0.5))
    raise PatchSpecError(
        f"PatchTrainer: patch must be a patch module, a (C, h, w) tensor, a (C, h, w) shape or a dict of "
        f"those; got {type(patch).__name__}"
    )


def patch_value(module: nn.Module) -> Any:
    """The module's current patch (a tensor or a dict of tensors)."""
    return module()


def detached(value: Any) -> Any:
    """A detached CPU copy of a patch value (tensor or dict)."""
    if isinstance(value, Mapping):
        return {k: detached(v) for k, v in value.items()}
    return value.detach().cpu().clone()


@torch.no_grad()
def project_patch_(patch: nn.Module) -> None:
    """Put every patch back in range: its own ``project_()``, else a clamp to [0, 1]."""
    modules = list(patch.values()) if isinstance(patch, nn.ModuleDict) else [patch]
    for module in modules:
        if hasattr(module, "project_"):
            module.project_()
        else:
            for p in module.parameters():
                p.clamp_(0.0, 1.0)


def patch_to_image(value: Any) -> np.ndarray:
    """(C, h, w) tensor in [0, 1] -> (h, w, C) uint8 array (grey patches become RGB)."""
    t = value.detach().cpu().float().clamp(0, 1)
    if t.shape[0] == 1:
        t = t.expand(3, *t.shape[1:])
    return (t.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
