"""The fused fast path: implant + geometric jitter in ONE resampling, colour/noise/blur as cheap tensor ops.

The standard "implant, then augment the whole image" pipeline resamples every image at least twice
(implant, then affine/perspective) and runs colour jitter through colour-space conversions. For patch
optimisation only the patch's pose and the scene's photometrics matter, so
:class:`FusedImplantAugment` composes, per sample,

    image coords  <-  [placement box]  <-  [affine jitter about the box centre]  <-  [corner jitter]

into one homography ``image -> patch`` and reads patch + alpha with ONE ``grid_sample`` over the
scene (:func:`pandemonium.attack.stages.geometry.warp_patch`); brightness (additive), contrast
(multiplicative), saturation (blend with luma), Gaussian blur and Gaussian noise then act on the RGB
composite with per-sample parameters. Difference from the Kornia path: the geometric jitter moves the
patch within the scene rather than warping the whole scene (the background stays put).

Same contract as the implanters (:mod:`pandemonium.attack.stages.implant`): exact replay, ``control``
(same scene, pose-independent colour conditions, no patch), ``kwargs["targets"]`` and ``kwargs["patch"]``.

Example:
    >>> stage = FusedImplantAugment("scenes.pt", scale=[0.8, 1.2], degrees=10, brightness=0.1)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from kornia.filters import gaussian_blur2d
from torch import Tensor

from pandemonium.attack.stages.base import StageError
from pandemonium.attack.stages.contract import SEED_HIGH
from pandemonium.attack.stages.geometry import (
    apply_homography_to_points,
    box_to_quad,
    crop_windows,
    homography_from_quads,
    invert_affine,
    paste_windows,
    quad_to_box,
    rotation_shear_scale_matrix,
    unit_quad,
)
from pandemonium.attack.stages.host_geometry import host_arrays, posed_box_placement
from pandemonium.attack.stages.implant import RectangleImplanter
from pandemonium.attack.stages.implant_args import MaskSpec
from pandemonium.attack.stages.implant_args import checked_range as _range
from pandemonium.attack.stages.registry import register_stage
from pandemonium.attack.stages.window_composite import apply_colour_matrix

__all__ = ["FusedImplantAugment", "adjust_photometric", "colour_matrix", "apply_colour_matrix", "colour_constants"]


def colour_matrix(
    brightness: Tensor, contrast: Tensor, saturation: Tensor | None, channels: int
) -> tuple[Tensor, Tensor]:
    """Per-sample affine colour map ``v -> M v + beta`` equal to: add ``brightness``, multiply by
    ``contrast``, blend with luma by ``saturation`` (RGB only). ``(B, C, C)`` and ``(B, C)``.

    All three are linear in RGB, so they collapse into one matrix: one pass over the pixels instead
    of three (and the luma weights sum to 1, so the offset is just ``contrast * brightness``).
    """
    b = brightness.shape[0]
    eye, luma = colour_constants(channels, brightness.dtype, brightness.device)
    values = [brightness, contrast] + ([saturation] if saturation is not None else [])
    host = host_arrays(eye, luma, *values) if len({v.dtype for v in values}) == 1 else None
    if host is not None:  # the same steps in NumPy, bit for bit
        eye, luma, brightness, contrast, *rest = host
        saturation = rest[0] if rest else None
    c = contrast.reshape(-1, 1, 1)
    if saturation is not None and channels == 3:
        s = saturation.reshape(-1, 1, 1)
        matrix = c * (s * eye + (1 - s) * luma)
    else:
        matrix = c * eye
    offset = (contrast * brightness).reshape(-1, 1)
    if host is not None:
        return torch.from_numpy(matrix), torch.from_numpy(np.repeat(offset, channels, axis=1))
    return matrix, offset.expand(b, channels)


@lru_cache(maxsize=16)
def colour_constants(channels: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """The identity ``(C, C)`` and the Rec. 601 luma rows ``(1, 3)`` of a colour matrix, built once per
    dtype/device (read-only; outside inference mode, so a backward pass may save them)."""
    with torch.inference_mode(False):
        eye = torch.eye(channels, dtype=dtype, device=device)
        return eye, torch.tensor([[0.299, 0.587, 0.114]], dtype=dtype, device=device)


def adjust_photometric(
    images: Tensor,
    brightness: Tensor | None = None,
    contrast: Tensor | None = None,
    saturation: Tensor | None = None,
) -> Tensor:
    """Per-sample ``(B,)`` brightness (added), contrast (multiplied) and saturation (blend with luma)."""
    b = images.shape[0]
    zero = images.new_zeros(b)
    matrix, offset = colour_matrix(
        brightness if brightness is not None else zero,
        contrast if contrast is not None else zero + 1,
        saturation,
        images.shape[1],
    )
    return apply_colour_matrix(images, matrix, offset)


def _as_float(mask: Any, like: Any) -> Any:
    """A boolean NumPy array or tensor as 0/1 in ``like``'s dtype."""
    return mask.astype(like.dtype) if isinstance(mask, np.ndarray) else mask.to(like.dtype)


def _tensors(values: dict[str, Any]) -> dict[str, Tensor]:
    """Host-computed draws (NumPy) as CPU tensors; tensors as they are."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in values.items()}


@register_stage
class FusedImplantAugment(RectangleImplanter):
    """Rectangle implant + affine/perspective jitter of the patch in one resampling, then cheap RGB ops.

    Geometry: ``scale`` (x the patch's pixel size) and a uniform position as :class:`RectangleImplanter`;
    then rotation ``degrees``, shear ``shear`` (degrees), zoom ``jitter_scale`` (range), translation
    ``translate`` (fraction of the placed patch's size) about the patch centre, and each corner moved by
    up to ``perspective`` x the patch size; all of it with probability ``p_geometric`` per sample.
    Photometrics, each per sample: ``brightness`` (+-), ``contrast`` and ``saturation`` (1 +-),
    ``noise`` (std drawn from [0, noise]), ``blur_sigma`` range applied with probability ``blur_p``
    (kernel ``blur_kernel``); all of it with probability ``p_color`` per sample.
    """

    name = "FusedImplantAugment"

    def __init__(
        self,
        bank: str | Mapping[str, Any],
        scale: float | Sequence[float] = (1.0, 1.0),
        degrees: float = 0.0,
        translate: float = 0.0,
        shear: float = 0.0,
        jitter_scale: float | Sequence[float] = (1.0, 1.0),
        perspective: float = 0.0,
        p_geometric: float = 1.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        noise: float = 0.0,
        blur_sigma: Sequence[float] | None = None,
        blur_p: float = 0.5,
        blur_kernel: int = 5,
        p_color: float = 1.0,
        keys: Sequence[str] | str | None = None,
        mask: MaskSpec = None,
        match_brightness: bool = False,
        brightness_reference: float = 0.5,
        brightness_range: Sequence[float] = (0.5, 1.5),
    ) -> None:
        # placement (scale, offset, fit check, box) is the rectangle implanter's; this class adds the
        # pose jitter composed into the same resampling and the RGB-space colour ops
        super().__init__(bank, scale, keys, mask, match_brightness, brightness_reference, brightness_range)
        n = self.name
        self.degrees = _range(n, "degrees", degrees, 0.0, 180.0)[1]
        self.translate = _range(n, "translate", translate, 0.0, 10.0)[1]
        self.shear = _range(n, "shear", shear, 0.0, 80.0)[1]
        self.jitter_scale = _range(n, "jitter_scale", jitter_scale, 1e-3, math.inf)
        self.perspective = _range(n, "perspective", perspective, 0.0, 0.5)[1]
        self.brightness = _range(n, "brightness", brightness, 0.0, 1.0)[1]
        self.contrast = _range(n, "contrast", contrast, 0.0, 1.0)[1]
        self.saturation = _range(n, "saturation", saturation, 0.0, 1.0)[1]
        self.noise = _range(n, "noise", noise, 0.0, 1.0)[1]
        self.blur_sigma = _range(n, "blur_sigma", blur_sigma, 1e-3, 100.0) if blur_sigma is not None else None
        self.blur_p = _range(n, "blur_p", blur_p, 0.0, 1.0)[1]
        self.p_geometric = _range(n, "p_geometric", p_geometric, 0.0, 1.0)[1]
        self.p_color = _range(n, "p_color", p_color, 0.0, 1.0)[1]
        if int(blur_kernel) < 1 or int(blur_kernel) % 2 == 0:
            raise StageError(f"stage {n!r}: blur_kernel={blur_kernel} must be a positive odd integer")
        self.blur_kernel = int(blur_kernel)
        self.params = {
            **self._base_params,
            "scale": self.scale,
            "degrees": self.degrees,
            "translate": self.translate,
            "shear": self.shear,
            "jitter_scale": self.jitter_scale,
            "perspective": self.perspective,
            "p_geometric": self.p_geometric,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "noise": self.noise,
            "blur_sigma": self.blur_sigma,
            "blur_p": self.blur_p,
            "blur_kernel": self.blur_kernel,
            "p_color": self.p_color,
        }
        self._register_ranges()

    def get_description(self) -> str:
        geometry = {k: self.params[k] for k in ("scale", "degrees", "translate", "shear", "jitter_scale", "perspective")}
        photometry = {k: self.params[k] for k in ("brightness", "contrast", "saturation", "noise", "blur_sigma")}
        return (
            f"**{self.name}**: implant into scenes from `{self.bank.source}` with pose jitter `{geometry}` in one "
            f"resampling, then per-sample RGB ops `{photometry}`"
        )

    # ------------------------------------------------------------ sampling
    def _ranges(self) -> dict[str, list[tuple[float, float]]]:
        """The uniform ranges of the placement and scene draws, column by column."""
        g, p = self.degrees, self.perspective
        sigma = tuple(self.blur_sigma) if self.blur_sigma is not None else (0.0, 0.0)
        return {
            "placement": [
                tuple(self.scale), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (-g, g), (-self.shear, self.shear),
                tuple(self.jitter_scale), (-self.translate, self.translate), (-self.translate, self.translate),
                *[(-p, p)] * 8,
            ],
            "scene": [
                (0.0, 1.0), (0.0, 1.0), (-self.brightness, self.brightness), (1 - self.contrast, 1 + self.contrast),
                (1 - self.saturation, 1 + self.saturation), (0.0, self.noise), sigma,
            ],
        }

    def _register_ranges(self) -> None:
        # low and width of every column, built once as buffers (they follow the stage's device)
        for name, ranges in self._ranges().items():
            bounds = torch.tensor(ranges, dtype=torch.float32)
            self.register_buffer(f"{name}_low", bounds[:, 0].clone(), persistent=False)
            self.register_buffer(f"{name}_width", bounds[:, 1] - bounds[:, 0], persistent=False)

    def _draw(self, batch: int, device, which: str) -> list[Tensor]:
        """One ``(batch, k)`` uniform draw scaled to the ``k`` ranges of ``which``: a few ops per step."""
        low, width = getattr(self, f"{which}_low").to(device), getattr(self, f"{which}_width").to(device)
        drawn = self.uniform(0.0, 1.0, (batch, low.shape[0]), device)
        host = host_arrays(low, width, drawn)
        if host is not None:  # CPU: the scaling and gating below run in NumPy (the same bits, no ops)
            low, width, drawn = host
            return list(np.ascontiguousarray((low + width * drawn).T))
        return list((low + width * drawn).unbind(1))

    def _sample_placement(self, batch, device):
        scale, ox, oy, on, angle, shear, zoom, sx, sy, *corners = self._draw(batch, device, "placement")
        geo = _as_float(on < self.p_geometric, scale)  # 1: jittered; 0: the identity pose
        stack = np.stack if isinstance(scale, np.ndarray) else torch.stack
        return _tensors({
            "scale": scale, "offset_x": ox, "offset_y": oy,
            "angle": angle * geo, "shear": shear * geo, "zoom": 1 + (zoom - 1) * geo,
            "shift_x": sx * geo, "shift_y": sy * geo,
            "corners": stack(corners, -1).reshape(batch, 4, 2) * geo.reshape(-1, 1, 1),
        })

    def _sample_scene(self, batch, device):
        on, blur, b, c, s, noise, sig = self._draw(batch, device, "scene")
        color = _as_float(on < self.p_color, b)
        blur_on = _as_float(blur < self.blur_p, b) * color
        seed = self.randint(0, SEED_HIGH, (batch,), device)  # one per row: a row re-renders alone
        return {
            **_tensors({
                "brightness": b * color, "contrast": 1 + (c - 1) * color, "saturation": 1 + (s - 1) * color,
                "noise_std": noise * color, "blur_sigma": sig * blur_on,
            }),
            "noise_seed": seed,
        }

    # ------------------------------------------------------------ geometry
    def _placement(self, values, image_index, patch_hw):
        h, w = patch_hw
        box = self._scaled_box(values, patch_hw)
        if self.perspective == 0:  # no corner jitter: all of it closed form, on the host in one go
            return posed_box_placement(
                box, values["angle"], values["zoom"], values["shear"], values["shift_x"], values["shift_y"], patch_hw
            )
        size = torch.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], -1)
        centre = 0.5 * (box[:, :2] + box[:, 2:])
        quad = box_to_quad(box) + values["corners"] * size.unsqueeze(1)
        affine = rotation_shear_scale_matrix(
            values["angle"], values["zoom"], values["shear"], centre,
            torch.stack([values["shift_x"], values["shift_y"]], -1) * size,
        )
        # image -> patch = (patch -> corner-jittered box)^-1 composed with the jitter's inverse
        to_patch = homography_from_quads(quad, unit_quad(h, w, quad.shape[0], quad.device, quad.dtype))
        h_img2patch = to_patch @ invert_affine(affine)
        return h_img2patch, quad_to_box(apply_homography_to_points(affine, quad))

    def _affine_placement(self):
        # corner jitter makes the placement projective; without it every factor is affine
        return True if self.perspective == 0 and type(self)._placement is FusedImplantAugment._placement else None

    # ------------------------------------------------------------ photometrics
    def _window_margin(self) -> int:
        # blur reads kernel//2 pixels around each output pixel: a ring that wide at the window edge is
        # taken from the full-image background, so the window needs that ring plus the blur's reach
        return 2 * (self.blur_kernel // 2) if self.blur_sigma is not None else 0

    def _colour(self, scene: Mapping[str, Tensor], channels: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The step's colour matrix and offset (built once; the background and the windows share it)."""
        return colour_matrix(
            scene["brightness"].to(dtype), scene["contrast"].to(dtype), scene["saturation"].to(dtype), channels
        )

    def _photometric(
        self, images: Tensor, scene: Mapping[str, Tensor], noise: Tensor | None,
        colour: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Colour matrix (``colour``, or built from ``scene``), then blur, then noise, then clamp to [0, 1]."""
        dtype = images.dtype
        matrix, offset = colour if colour is not None else self._colour(scene, images.shape[1], dtype)
        out = apply_colour_matrix(images, matrix, offset)
        if self.blur_sigma is not None:
            sigma = scene["blur_sigma"].to(dtype)
            blur_on = sigma > 0
            safe = torch.where(blur_on, sigma, torch.ones_like(sigma))
            blurred = gaussian_blur2d(out, self.blur_kernel, torch.stack([safe, safe], -1))
            out = torch.where(blur_on.view(-1, 1, 1, 1), blurred, out)
        if noise is not None:
            out = out + scene["noise_std"].view(-1, 1, 1, 1).to(dtype) * noise
        # without a gradient (the background) the fresh tensor is clamped in place: one full-image copy fewer
        return out.clamp(0.0, 1.0) if out.requires_grad else out.clamp_(0.0, 1.0)

    def _noise(self, images: Tensor, scene: Mapping[str, Tensor]) -> Tensor | None:
        """Each row's noise field from that row's own seed, so it does not depend on the batch."""
        if self.noise <= 0:
            return None
        generator = torch.Generator(device=images.device)
        fields = []
        for seed in scene["noise_seed"].tolist():
            generator.manual_seed(int(seed))
            fields.append(
                torch.randn(images.shape[1:], generator=generator, device=images.device, dtype=images.dtype)
            )
        return torch.stack(fields)

    def _inner(self, origin: Tensor, size: tuple[int, int], image_hw: tuple[int, int], device) -> Tensor | None:
        """Window pixels whose blur neighbourhood lies inside the window (or the image)."""
        reach = self.blur_kernel // 2 if self.blur_sigma is not None else 0
        if reach == 0 or tuple(size) == tuple(image_hw):
            return None
        (wh, ww), (height, width) = size, image_hw
        ox, oy = origin[:, 0:1].to(device), origin[:, 1:2].to(device)
        rows = torch.arange(wh, device=device).view(1, -1)
        cols = torch.arange(ww, device=device).view(1, -1)
        row_ok = ((oy == 0) | (rows >= reach)) & ((oy + wh == height) | (rows < wh - reach))
        col_ok = ((ox == 0) | (cols >= reach)) & ((ox + ww == width) | (cols < ww - reach))
        return (row_ok.unsqueeze(-1) & col_ok.unsqueeze(1)).unsqueeze(1)

    def apply(self, x, params, control: bool = False, evaluate: bool = False, **kwargs):
        patches, index, images, targets = self._scenes(x, params)
        scene = {k[len("scene.") :]: v.to(images.device) for k, v in params.items() if k.startswith("scene.")}
        noise = self._noise(images, scene)
        colour = self._colour(scene, images.shape[1], images.dtype)
        with torch.no_grad():  # the background carries no gradient: only the windows around patches do
            background = self._photometric(images, scene, noise, colour)
        if self.blur_sigma is None and self._single_patch_step(patches, control):
            std = scene["noise_std"].to(images.dtype) if noise is not None else None
            out, origin, coverage, boxes = self._composite_one(
                patches, index, images, params, background, post=colour, noise=noise, noise_std=std
            )
            return out, {"targets": self._attach_targets(targets, origin, coverage, boxes, images), "patch": x}
        windows, origin, size, coverage, boxes = self._composite_windows(patches, index, images, params, control)
        if control:
            out = background
        else:
            window_noise = crop_windows(noise, origin, size) if noise is not None else None
            finished = self._photometric(windows, scene, window_noise, colour)
            inner = self._inner(origin, size, tuple(images.shape[-2:]), images.device)
            if inner is not None:
                finished = torch.where(inner, finished, crop_windows(background, origin, size))
            out = paste_windows(background, origin, finished)
        return out, {"targets": self._attach_targets(targets, origin, coverage, boxes, images), "patch": x}
