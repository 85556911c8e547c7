"""Conditions applied to the image a victim sees, for the robustness curves (evaluation only).

- ``brightness``: a factor on the whole image (1 = unchanged);
- ``blur``: the sigma in pixels of a Gaussian blur of the whole image (0 = unchanged);
- ``jpeg``: the JPEG quality (Pillow, per image; no gradient).

:func:`image_condition` applies one to the input of a pipeline's model stage while active.

>>> import torch
>>> brightness(torch.full((1, 3, 2, 2), 0.8), 1.5).max().item()
1.0
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

__all__ = ["CURVE_CONDITIONS", "IMAGE_CONDITIONS", "blur", "brightness", "image_condition", "jpeg"]


def brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """The whole image times ``factor``, clipped to [0, 1]."""
    return (x * float(factor)).clamp(0.0, 1.0)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A Gaussian blur of ``sigma`` pixels (kernel of 2 * ceil(3 sigma) + 1 taps); 0 leaves ``x`` as is."""
    from kornia.filters import gaussian_blur2d

    if sigma <= 0:
        return x
    size = 2 * math.ceil(3 * float(sigma)) + 1
    return gaussian_blur2d(x, (size, size), (float(sigma), float(sigma)), border_type="reflect")


def jpeg(x: torch.Tensor, quality: float) -> torch.Tensor:
    """Each image JPEG-encoded at ``quality`` (Pillow) and decoded: no gradient, evaluation only."""
    from PIL import Image

    out = []
    for image in x.detach().clamp(0, 1).cpu():
        array = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        mode = "RGB" if array.shape[2] == 3 else "L"
        buffer = io.BytesIO()
        Image.fromarray(array if mode == "RGB" else array[..., 0], mode).save(buffer, format="JPEG",
                                                                               quality=int(quality))
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(mode), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(decoded.reshape(*decoded.shape[:2], -1)).permute(2, 0, 1))
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


#: conditions applied to the image the model sees (after every stage), by name
IMAGE_CONDITIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "brightness": brightness, "blur": blur, "jpeg": jpeg}
CURVE_CONDITIONS = ("scale", "angle", *IMAGE_CONDITIONS)


@contextmanager
def image_condition(pipeline: Any, fn: Callable[[torch.Tensor, float], torch.Tensor],
                    value: float) -> Iterator[None]:
    """While active, the model stage (the pipeline's last) sees ``fn(x, value)`` instead of ``x``;
    the sampled conditions are untouched, so patched, control and random arms all get it."""
    from pandemonium.attack.rows import pipeline_stages

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            return (fn(args[0], value), *args[1:]), kwargs
        return args, {**kwargs, "x": fn(kwargs["x"], value)}

    handle = pipeline_stages(pipeline)[-1].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
