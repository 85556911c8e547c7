"""Implanter arguments: range pairs, alpha masks (file, nested list or ``"circle"``) and patch boxes.

Shared by the bank implanters (:mod:`pandemonium.attack.stages.implant_base`) and the fused stage;
every check raises one :class:`~pandemonium.attack.stages.contract.StageError` naming the stage.

>>> checked_range("RectangleImplanter", "scale", 0.5, 0.0, 4.0)
[0.5, 0.5]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pandemonium.attack.stages.contract import StageError
from pandemonium.attack.stages.host_geometry import host_arrays

__all__ = ["MaskSpec", "Range", "checked_range", "circle_alpha", "load_alpha_mask", "size_and_offset"]

MaskSpec = str | Sequence[Sequence[float]] | None
Range = float | Sequence[float]


def checked_range(stage: str, name: str, value: float | Sequence[float], low: float, high: float) -> list[float]:
    """``value`` (a number or an increasing ``[low, high]`` pair) as a pair within ``[low, high]``."""
    pair = [float(value), float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(pair) != 2 or pair[0] > pair[1]:
        raise StageError(f"stage {stage!r}: {name}={value!r} must be a number or an increasing [low, high] pair")
    if pair[0] < low or pair[1] > high:
        raise StageError(f"stage {stage!r}: {name}={value!r} must lie within [{low}, {high}]")
    return pair


def load_alpha_mask(spec: MaskSpec, stage: str) -> Tensor | None:
    """An alpha mask from its spec: ``None``, ``"circle"`` (resolved per patch size at run time, so
    ``None`` here), an image path (grey levels / alpha channel -> [0, 1]) or a nested list ``h x w``."""
    if spec is None or spec == "circle":
        return None
    if isinstance(spec, str):
        from PIL import Image

        path = Path(spec)
        if not path.is_file():
            raise StageError(f"stage {stage!r}: mask file not found: {spec}")
        with Image.open(path) as im:
            arr = np.asarray(im.getchannel("A") if "A" in im.getbands() else im.convert("L"), dtype=np.float32)
        return torch.from_numpy(arr / 255.0)
    mask = torch.as_tensor(spec, dtype=torch.float32)
    if mask.ndim != 2:
        raise StageError(f"stage {stage!r}: mask must be h x w, got shape {tuple(mask.shape)}")
    if mask.min() < 0 or mask.max() > 1:
        raise StageError(f"stage {stage!r}: mask values must be in [0, 1], got [{float(mask.min())}, {float(mask.max())}]")
    return mask


def circle_alpha(h: int, w: int, device, dtype) -> Tensor:
    """The ``h x w`` alpha of the ellipse inscribed in the patch (1 inside, 0 outside)."""
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h - 0.5
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w - 0.5
    r2 = ys.view(-1, 1) ** 2 + xs.view(1, -1) ** 2
    return (r2 <= 0.25).to(dtype)


def size_and_offset(
    stage: str, size_w: Tensor, size_h: Tensor, offset_x: Tensor, offset_y: Tensor, image_hw: tuple[int, int], what: str
) -> Tensor:
    """The ``(B, 4)`` xyxy box of a ``size_w x size_h`` patch at relative ``offset`` (in [0, 1]) within
    the image; refuses a patch larger than the image, naming ``what`` and its size."""
    height, width = image_hw
    values = (size_w, size_h, offset_x, offset_y)
    host = host_arrays(*values) if len({v.dtype for v in values}) == 1 else None
    if host is not None:  # the same elementwise steps in NumPy (bit-identical, no dispatched ops)
        w, h, ox, oy = host
        if not ((w > width + 1e-4) | (h > height + 1e-4)).any():  # else the tensor path names the culprit
            x0, y0 = ox * (width - w), oy * (height - h)
            return torch.from_numpy(np.stack([x0, y0, x0 + w, y0 + h], axis=-1))
    too_big = (size_w > width + 1e-4) | (size_h > height + 1e-4)
    if bool(too_big.any()):
        i = int(too_big.nonzero()[0])
        raise StageError(
            f"stage {stage!r}: {what} of {float(size_w[i]):.1f}x{float(size_h[i]):.1f} px (w x h) is larger "
            f"than the {width}x{height} image"
        )
    x0 = offset_x * (width - size_w)
    y0 = offset_y * (height - size_h)
    return torch.stack([x0, y0, x0 + size_w, y0 + size_h], dim=-1)
