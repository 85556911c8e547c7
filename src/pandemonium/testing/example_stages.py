"""Stages written the way other frameworks' users write them, for the contract tests and as examples.

* :class:`SeedJitter` follows the seed (``seeds/000``, "Extending"): it overrides ``forward``, keeps its
  sample in ``lastsample`` and draws from the global torch RNG.
* The ``Em*`` stages follow electricmayhem's conventions: ``_forward_single(x, control, evaluate,
  params={}, key=None, **kwargs)`` called once per patch, a ``lastsample`` dict of tensors, a
  ``sample(n, evaluate, **overrides)`` method, ``params={}`` defaults, global RNG, and (for
  :class:`EmHighPassFilter`) no ``name`` attribute. Only their base class is pandemonium's, and the
  implanter declares ``role = "implant"`` so the checker knows its control output has no patch.

Each one is small on purpose; none is a built-in stage.
"""

# ruff: noqa: B006 - params={} defaults are the electricmayhem convention these stages demonstrate
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pandemonium.attack.stages.base import PipelineBase

__all__ = [
    "EmHighPassFilter",
    "EmPatchResizer",
    "EmPatchScroller",
    "EmPatchStacker",
    "EmPatchTiler",
    "EmRectangleImplanter",
    "SeedJitter",
    "example_stages",
]


def _as_tensor(value: Any, like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.as_tensor(np.asarray(value), device=like.device).to(dtype)


class SeedJitter(PipelineBase):
    """Seed-style: a random brightness gain per sample, from the global RNG, kept in ``lastsample``."""

    name = "SeedJitter"

    def __init__(self, strength=0.2):
        super().__init__()
        self.params = {"strength": strength}
        self.lastsample = {}

    def forward(self, x, control=False, evaluate=False, params=None, **kwargs):
        if params:
            self.lastsample = {"gain": _as_tensor(params["gain"], x, x.dtype)}
        elif not control:
            self.lastsample = {"gain": 1 + self.params["strength"] * (2 * torch.rand(x.shape[0]) - 1)}
        gain = self.lastsample["gain"].to(device=x.device, dtype=x.dtype)
        return x * gain.view(-1, 1, 1, 1), kwargs

    def get_last_sample_as_dict(self):
        return {k: v.cpu().numpy() for k, v in self.lastsample.items()}


class EmPatchResizer(PipelineBase):
    """Resize each patch to ``size`` (H, W)."""

    name = "EmPatchResizer"

    def __init__(self, size, interpolation="bilinear"):
        super().__init__()
        self.size = tuple(size)
        self.params = {"size": list(size), "interpolation": interpolation}

    def _forward_single(self, x, control=False, evaluate=False, params={}, key=None, **kwargs):
        return F.interpolate(x, size=self.size, mode=self.params["interpolation"]), kwargs

    def get_last_sample_as_dict(self):
        return {}


class EmPatchStacker(PipelineBase):
    """Repeat a one-channel patch into ``num_channels`` channels."""

    name = "EmPatchStacker"

    def __init__(self, num_channels=3):
        super().__init__()
        self.params = {"num_channels": num_channels}

    def _forward_single(self, x, control=False, evaluate=False, params={}, key=None, **kwargs):
        return x.repeat(1, self.params["num_channels"], 1, 1), kwargs

    def get_last_sample_as_dict(self):
        return {}


class EmPatchTiler(PipelineBase):
    """Tile each patch until it covers ``size`` (H, W), then crop to it."""

    name = "EmPatchTiler"

    def __init__(self, size):
        super().__init__()
        self.params = {"size": list(size)}

    def _forward_single(self, x, control=False, evaluate=False, params={}, key=None, **kwargs):
        height, width = self.params["size"]
        reps = (math.ceil(height / x.shape[2]), math.ceil(width / x.shape[3]))
        return x.repeat(1, 1, *reps)[:, :, :height, :width], kwargs

    def get_last_sample_as_dict(self):
        return {}


class EmHighPassFilter(PipelineBase):
    """Zero the spatial frequencies below ``limit_x`` / ``limit_y`` (in FFT bins); no ``name`` set."""

    def __init__(self, limit=None, limit_x=None, limit_y=None, keys=None):
        super().__init__()
        limit_x = limit if limit_x is None else limit_x
        limit_y = limit if limit_y is None else limit_y
        self.params = {"limit_x": limit_x, "limit_y": limit_y}
        if keys is not None:
            self.params["keys"] = keys

    def _forward_single(self, x, control=False, evaluate=False, params={}, key=None, **kwargs):
        height, width = x.shape[-2:]
        fy = torch.fft.fftfreq(height, device=x.device).abs().view(-1, 1) * height
        fx = torch.fft.rfftfreq(width, device=x.device).view(1, -1) * width
        keep = ((fy >= self.params["limit_y"]) | (fx >= self.params["limit_x"])).to(x.dtype)
        return torch.fft.irfft2(torch.fft.rfft2(x) * keep, s=(height, width)), kwargs

    def get_last_sample_as_dict(self):
        return {}


class EmPatchScroller(PipelineBase):
    """Roll each patch by a random offset with wrap-around; one pair of offsets per patch key."""

    name = "EmPatchScroller"

    def __init__(self, keys=None):
        super().__init__()
        self.params = {}
        if keys is not None:
            self.params["keys"] = keys
        self.lastsample = {}

    def _forward_single(self, x, control=False, evaluate=False, params={}, key=None, **kwargs):
        names = [f"offset_y_{key}" if key else "offset_y", f"offset_x_{key}" if key else "offset_x"]
        if not control:
            for name, size in zip(names, x.shape[-2:]):
                drawn = params[name] if name in params else torch.randint(0, size, [x.shape[0]])
                self.lastsample[name] = torch.as_tensor(np.asarray(drawn)).long()
        dy, dx = (self.lastsample[name].tolist() for name in names)
        rolled = [torch.roll(x[i], shifts=(dy[i], dx[i]), dims=(-2, -1)) for i in range(x.shape[0])]
        return torch.stack(rolled), kwargs

    def get_last_sample_as_dict(self):
        return {k: [int(i) for i in v.cpu().numpy()] for k, v in self.lastsample.items()}


class EmRectangleImplanter(PipelineBase):
    """Paste each patch into one of ``num_images`` scenes at a random scale and position.

    The scenes come from ``scene_seed`` so that ``params`` rebuild them; ``sample`` draws the image
    index, the scale and the position fractions from the global RNG and keeps them in ``lastsample``.
    """

    name = "EmRectangleImplanter"
    role = "implant"

    def __init__(self, image_size=24, num_images=4, scale=(0.75, 1.25), scene_seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(scene_seed)
        self.register_buffer("images", torch.rand(num_images, 3, image_size, image_size, generator=generator))
        self.params = {
            "image_size": image_size, "num_images": num_images, "scale": list(scale), "scene_seed": scene_seed,
        }
        self.lastsample = {}

    def sample(self, n, evaluate=False, **kwargs):
        low, high = self.params["scale"]
        drawn = {
            "image": torch.randint(0, self.params["num_images"], [n]),
            "scale": low + (high - low) * torch.rand([n]),
            "offset_frac_x": torch.rand([n]),
            "offset_frac_y": torch.rand([n]),
        }
        for name, value in kwargs.items():
            if name in drawn:
                drawn[name] = torch.as_tensor(np.asarray(value)).to(drawn[name].dtype)
        self.lastsample = drawn

    def forward(self, patches, control=False, evaluate=False, params={}, **kwargs):
        if control:
            params = self.lastsample
        self.sample(patches.shape[0], evaluate=evaluate, **params)
        s = self.lastsample
        scenes = self.images[s["image"].to(self.images.device)].to(patches.dtype)
        if control:
            return scenes, kwargs
        out = []
        size = self.params["image_size"]
        for i in range(patches.shape[0]):
            side = [max(1, min(size, round(float(s["scale"][i]) * d))) for d in patches.shape[-2:]]
            resized = F.interpolate(patches[i : i + 1], size=side, mode="bilinear")
            top = int(float(s["offset_frac_y"][i]) * (size - side[0]))
            left = int(float(s["offset_frac_x"][i]) * (size - side[1]))
            scene = scenes[i : i + 1].clone()
            scene[:, :, top : top + side[0], left : left + side[1]] = resized
            out.append(scene)
        return torch.cat(out), kwargs

    def get_last_sample_as_dict(self):
        return {k: [float(i) for i in v.cpu().numpy()] for k, v in self.lastsample.items()}

    def get_description(self):
        return f"**{self.name}**: {self.params['num_images']} scenes, scale {self.params['scale']}"


def example_stages(channels: int = 3) -> dict[str, tuple[PipelineBase, tuple[int, ...]]]:
    """Each example stage with the patch-batch shape it takes, keyed by class name."""
    patch = (3, channels, 8, 8)
    return {
        "SeedJitter": (SeedJitter(0.3), patch),
        "EmPatchResizer": (EmPatchResizer([6, 10]), patch),
        "EmPatchStacker": (EmPatchStacker(3), (3, 1, 8, 8)),
        "EmPatchTiler": (EmPatchTiler([12, 20]), patch),
        "EmHighPassFilter": (EmHighPassFilter(limit=1, keys=["a"]), patch),
        "EmPatchScroller": (EmPatchScroller(keys=["a"]), patch),
        "EmRectangleImplanter": (EmRectangleImplanter(), patch),
    }
