"""Per-sample windows of an image batch: the implant works on a window around each patch, not the scene.

:func:`patch_windows` picks one equal-size window per sample, :func:`crop_windows` reads them and
:func:`paste_windows` writes them back (out of place, differentiable). One step crops and pastes the same
windows several times, so the flat pixel index of a set of windows is built once and reused. These are
re-exported by :mod:`pandemonium.attack.stages.geometry`.

Example:
    >>> images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8)
    >>> origin, size = patch_windows(torch.tensor([[1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 6.0, 6.0]]), (8, 8), 0)
    >>> size, origin.tolist()
    ((4, 4), [[1, 1], [4, 4]])
    >>> torch.equal(paste_windows(images, origin, crop_windows(images, origin, size)), images)
    True
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = ["patch_windows", "crop_windows", "paste_windows", "window_index"]


# constants built once per shape/device (read-only; outside inference mode, so autograd may save them)
@lru_cache(maxsize=64)
def _window_offsets(height: int, width: int, stride: int, device: torch.device) -> Tensor:
    """Flat offsets ``(h*w,)`` of a ``height x width`` window's pixels in rows of ``stride`` pixels."""
    with torch.inference_mode(False):
        rows = torch.arange(height, device=device).view(-1, 1) * stride
        return (rows + torch.arange(width, device=device)).view(-1)


def patch_windows(
    boxes: Tensor, image_hw: tuple[int, int], margin: int, multiple: int = 4
) -> tuple[Tensor, tuple[int, int]]:
    """One equal-size window per sample that holds its box (``(B, 4)`` xyxy) plus ``margin`` pixels.

    Returns the window origins ``(B, 2)`` (long, ``x, y``; clamped so every window lies inside the
    image) and the common window size ``(h, w)`` (the largest box + 2 margins, rounded up to
    ``multiple``, at most the image). Working on windows instead of whole images is what makes the
    implant cost scale with the patch, not with the scene.
    """
    height, width = image_hw
    box = boxes.detach()
    if box.device.type == "cpu" and not boxes.requires_grad:  # the usual case: NumPy, bit-identical
        return _patch_windows_host(box.numpy(), height, width, margin, multiple)
    zero, limit = _box_limits(height, width, box.dtype, box.device)
    box = torch.clamp(box, zero, limit)
    low, high = box[:, :2].floor(), box[:, 2:].ceil()  # (B, 2) x, y each
    # the window size is a shape, so it has to reach Python: one host read per batch, of two numbers
    extent = (high - low).amax(0).tolist() if box.shape[0] else [0.0, 0.0]
    win_w = min(width, int(math.ceil((extent[0] + 2 * margin) / multiple) * multiple))
    win_h = min(height, int(math.ceil((extent[1] + 2 * margin) / multiple) * multiple))
    top = box.new_tensor([width - win_w, height - win_h])
    return torch.minimum((low - margin).clamp_min(0), top).long(), (win_h, win_w)


def _patch_windows_host(
    box: np.ndarray, height: int, width: int, margin: int, multiple: int
) -> tuple[Tensor, tuple[int, int]]:
    limit = np.array([width, height, width, height], dtype=box.dtype)
    box = np.minimum(np.maximum(box, np.zeros((), box.dtype)), limit)
    low, high = np.floor(box[:, :2]), np.ceil(box[:, 2:])
    extent = (high - low).max(0).tolist() if box.shape[0] else [0.0, 0.0]
    win_w = min(width, int(math.ceil((extent[0] + 2 * margin) / multiple) * multiple))
    win_h = min(height, int(math.ceil((extent[1] + 2 * margin) / multiple) * multiple))
    top = np.array([width - win_w, height - win_h], dtype=box.dtype)
    origin = np.minimum(np.maximum(low - margin, np.zeros((), box.dtype)), top).astype(np.int64)
    return torch.from_numpy(origin), (win_h, win_w)


@lru_cache(maxsize=32)
def _box_limits(height: int, width: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    with torch.inference_mode(False):
        return torch.zeros(4, dtype=dtype, device=device), torch.tensor(
            [width, height, width, height], dtype=dtype, device=device
        )


# The last few window indices, keyed by the origin tensor itself: one step crops and pastes the same
# windows several times (scene, background, coverage, mask), so the index is built once per step.
_INDEX_CACHE: dict[tuple, tuple[Tensor, int, Tensor]] = {}


def window_index(origin: Tensor, size: tuple[int, int], width: int, channels: int) -> Tensor:
    """Flat pixel index ``(B, C, h*w)`` of every pixel of the windows at ``origin`` in rows of ``width``
    pixels: what :func:`crop_windows` gathers and :func:`paste_windows` scatters (built once per step)."""
    # gather/scatter on contiguous (B, C, H*W) views are much cheaper than advanced indexing with a
    # channel slice
    key = (id(origin), tuple(size), width, origin.device)
    hit = _INDEX_CACHE.get(key)
    if hit is not None and hit[0] is origin and hit[1] == origin._version:
        flat = hit[2]
    else:
        start = origin[:, 1:2] * width + origin[:, 0:1]  # (B, 1): flat index of each window's corner
        flat = (start + _window_offsets(size[0], size[1], width, origin.device)).unsqueeze(1)
        if len(_INDEX_CACHE) >= 2:  # an index is B x window pixels of int64: keep only the latest ones
            _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = (origin, origin._version, flat)
    return flat.expand(-1, channels, -1)


def crop_windows(images: Tensor, origin: Tensor, size: tuple[int, int]) -> Tensor:
    """Per-sample windows ``(B, C, h, w)`` of ``images`` at ``origin`` (see :func:`patch_windows`)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    b, c, _, width = images.shape
    index = window_index(origin.to(images.device), size, width, c)
    return images.reshape(b, c, -1).gather(2, index).view(b, c, *size)


def paste_windows(images: Tensor, origin: Tensor, windows: Tensor) -> Tensor:
    """``images`` with each sample's window replaced (out of place; gradients flow to ``windows``)."""
    if tuple(images.shape[-2:]) == tuple(windows.shape[-2:]):
        return windows
    b, c, height, width = images.shape
    index = window_index(origin.to(images.device), (windows.shape[-2], windows.shape[-1]), width, c)
    out = images.reshape(b, c, -1).scatter(2, index, windows.reshape(b, c, -1))
    return out.view(b, c, height, width)
