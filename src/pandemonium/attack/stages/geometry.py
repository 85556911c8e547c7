"""Batched plane geometry shared by the implant, augment and fused stages.

Conventions (used by every function here, so stages never mix them):

- Pixel coordinates are continuous: pixel ``(i, j)`` covers ``[j, j+1] x [i, i+1]`` and its centre is
  ``(j + 0.5, i + 0.5)``. A box ``(x0, y0, x1, y1)`` (xyxy) covers ``[x0, x1] x [y0, y1]``; a patch of
  ``h x w`` pixels covers ``[0, w] x [0, h]`` in its own coordinates.
- Quads are ``(..., 4, 2)`` tensors of ``(x, y)`` corners in the order top-left, top-right,
  bottom-right, bottom-left.
- Homographies are ``(B, 3, 3)`` and act on homogeneous column vectors ``(x, y, 1)``.
- Resampling is backward mapping: for every *output* pixel a homography gives the *source* position,
  and one ``grid_sample`` (``align_corners=False``, matching the pixel convention) reads it.

Example:
    >>> patch = torch.rand(2, 3, 8, 8)
    >>> images = torch.zeros(2, 3, 32, 32)
    >>> boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0], [10.0, 2.0, 26.0, 18.0]])
    >>> out, coverage = warp_composite(images, patch, None, box_to_source_homography(boxes, (8, 8)))
    >>> out.shape, coverage.shape
    (torch.Size([2, 3, 32, 32]), torch.Size([2, 1, 32, 32]))
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.transform import get_perspective_transform
from torch import Tensor

from pandemonium.attack.stages.windows import crop_windows, paste_windows, patch_windows

__all__ = [
    "box_to_quad",
    "quad_to_box",
    "unit_quad",
    "homography_from_quads",
    "box_to_source_homography",
    "homography_grid",
    "warp_homography",
    "window_grid",
    "is_affine",
    "warp_patch",
    "composite",
    "warp_composite",
    "region_mean",
    "patch_windows",
    "crop_windows",
    "paste_windows",
    "translate_homography",
    "rotation_shear_scale_matrix",
    "invert_affine",
    "apply_homography_to_points",
    "tilt_quad",
    "luminance",
    "focal_from_fov",
]


def box_to_quad(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` xyxy boxes -> ``(..., 4, 2)`` quads (TL, TR, BR, BL)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(
        [torch.stack([x0, y0], -1), torch.stack([x1, y0], -1), torch.stack([x1, y1], -1), torch.stack([x0, y1], -1)],
        dim=-2,
    )


def quad_to_box(quads: torch.Tensor) -> torch.Tensor:
    """Axis-aligned xyxy bounding box ``(..., 4)`` of ``(..., 4, 2)`` quads."""
    lo = quads.amin(dim=-2)
    hi = quads.amax(dim=-2)
    return torch.cat([lo, hi], dim=-1)


def unit_quad(height: int, width: int, batch: int, device=None, dtype=None) -> torch.Tensor:
    """Corner quad of an ``height x width`` raster, repeated ``batch`` times: ``(B, 4, 2)``."""
    box = torch.tensor([0.0, 0.0, float(width), float(height)], device=device, dtype=dtype)
    return box_to_quad(box).unsqueeze(0).expand(batch, 4, 2)


def homography_from_quads(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``(B, 3, 3)`` homography mapping each ``src`` quad onto its ``dst`` quad (both ``(B, 4, 2)``).

    Kornia's DLT solver does the work; it is solved in float64 because pixel-scale coordinates make the
    8x8 system badly conditioned in float32 (errors of ~1e-3 px otherwise show up as seams).
    """
    h = get_perspective_transform(src.double(), dst.double())
    return h.to(src.dtype)


def box_to_source_homography(boxes: torch.Tensor, source_hw: tuple[int, int]) -> torch.Tensor:
    """Closed-form homography from image coordinates to the coordinates of a source raster of
    ``source_hw`` that is stretched onto each axis-aligned box (``(B, 4)`` xyxy) -> ``(B, 3, 3)``.

    This is the rectangle special case of ``homography_from_quads(box_to_quad(boxes), unit_quad)``,
    written out because it is exact (no linear solve) and the hot path of every rectangle implanter.
    """
    h, w = source_hw
    if boxes.device.type == "cpu" and not boxes.requires_grad and boxes.dtype in (torch.float32, torch.float64):
        return _box_to_source_homography_host(boxes, h, w)
    x0, y0, x1, y1 = boxes.unbind(-1)
    sx = w / (x1 - x0)
    sy = h / (y1 - y0)
    zero = torch.zeros_like(sx)
    one = torch.ones_like(sx)
    return torch.stack(
        [
            torch.stack([sx, zero, -x0 * sx], -1),
            torch.stack([zero, sy, -y0 * sy], -1),
            torch.stack([zero, zero, one], -1),
        ],
        dim=-2,
    )


def _box_to_source_homography_host(boxes: Tensor, h: int, w: int) -> Tensor:
    # the same steps in NumPy, in the boxes' dtype (bit-identical: torch's scalar / tensor is a reciprocal
    # then a product), about a microsecond each instead of a dispatched op each
    x0, y0, x1, y1 = np.moveaxis(boxes.numpy(), -1, 0)
    sx = np.reciprocal(x1 - x0) * np.asarray(w, x0.dtype)
    sy = np.reciprocal(y1 - y0) * np.asarray(h, x0.dtype)
    zero, one = np.zeros_like(sx), np.ones_like(sx)
    rows = np.stack([sx, zero, -x0 * sx, zero, sy, -y0 * sy, zero, zero, one], -1)
    return torch.from_numpy(rows.reshape(*boxes.shape[:-1], 3, 3))


def _normalise_source(h_out2src: torch.Tensor, source_hw: tuple[int, int]) -> torch.Tensor:
    # Fold the pixel -> [-1, 1] normalisation of grid_sample (align_corners=False) into the matrix,
    # so the per-pixel work is one batched matmul and one division.
    return _normaliser(source_hw[0], source_hw[1], h_out2src.dtype, h_out2src.device) @ h_out2src


# Constants of a step (normalisers, index ramps) are built once per shape/dtype/device and reused: each
# would otherwise be a few tiny ops (and, on a GPU, a host-to-device copy) per step. They are read-only,
# and built outside inference mode: a cached inference tensor could never be saved for a backward pass.
@lru_cache(maxsize=64)
def _normaliser(sh: int, sw: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    with torch.inference_mode(False):
        return torch.tensor([[2.0 / sw, 0.0, -1.0], [0.0, 2.0 / sh, -1.0], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


@lru_cache(maxsize=64)
def _pixel_centres(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(n,)`` ramp ``0.5, 1.5, ...`` (exact in every float dtype for image-sized ``n``)."""
    with torch.inference_mode(False):
        return torch.arange(n, device=device, dtype=dtype) + 0.5


@lru_cache(maxsize=32)
def _pixel_grid(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Homogeneous pixel centres ``(H*W, 3)``, row-major."""
    ys, xs = _pixel_centres(height, dtype, device), _pixel_centres(width, dtype, device)
    with torch.inference_mode(False):
        return torch.stack(
            [xs.repeat(height), ys.repeat_interleave(width), torch.ones(height * width, device=device, dtype=dtype)], -1
        )


def homography_grid(h_out2src: torch.Tensor, out_hw: tuple[int, int], source_hw: tuple[int, int]) -> torch.Tensor:
    """Sampling grid ``(B, H, W, 2)`` for ``grid_sample``: output pixel centres mapped by ``h_out2src``
    (output pixel coords -> source pixel coords) and normalised for ``align_corners=False``.

    Points that land behind the projection centre (non-positive ``w``) are sent outside the source.
    """
    height, width = out_hw
    dtype, device = h_out2src.dtype, h_out2src.device
    m = _normalise_source(h_out2src, source_hw)
    # One batched matmul maps every pixel; few large ops matter more than few FLOPs here, because each
    # large op is a parallel region (and a kernel launch on a GPU).
    mapped = torch.matmul(_pixel_grid(height, width, dtype, device), m.transpose(1, 2)).view(-1, height, width, 3)
    if is_affine(m):
        return mapped[..., :2]  # affine: w == 1 everywhere
    den = mapped[..., 2:]
    valid = den > 1e-8
    return torch.where(valid, mapped[..., :2] / den.clamp_min(1e-8), torch.full_like(den, 2.0))


def is_affine(m: Tensor) -> bool:
    """Whether every ``(B, 3, 3)`` matrix has the bottom row ``(0, 0, 1)`` (one host sync)."""
    return bool((m[:, 2, :2].abs().amax() < 1e-12) & ((m[:, 2, 2] - 1).abs().amax() < 1e-12))


def window_grid(
    h_img2src: torch.Tensor,
    origin: torch.Tensor,
    out_hw: tuple[int, int],
    source_hw: tuple[int, int],
    affine: bool | None = None,
) -> torch.Tensor:
    """Sampling grid ``(B, H, W, 2)`` of per-sample windows at ``origin`` ``(B, 2)`` (x, y) of the image.

    Each window pixel's image coordinates (integers + 0.5, exact) are mapped with elementwise ops only,
    so a pixel's grid value does not depend on where its window starts or how large it is -- a row
    rendered alone (with its own window) gets the same pixels as in its batch. ``affine=True`` says the
    caller knows every matrix is affine (skips the check, a host sync); ``None`` checks.
    """
    height, width = out_hw
    dtype, device = h_img2src.dtype, h_img2src.device
    m = _normalise_source(h_img2src, source_hw)
    b = m.shape[0]
    origin = origin.to(device=device, dtype=dtype).view(b, 2, 1, 1)
    xs = _pixel_centres(width, dtype, device).view(1, 1, 1, width) + origin[:, :1]  # (B, 1, 1, W)
    ys = _pixel_centres(height, dtype, device).view(1, 1, height, 1) + origin[:, 1:]  # (B, 1, H, 1)
    # Both coordinates at once, a*x + b*y + c per pixel, elementwise, computed as (B, 2, H, W) and
    # returned as its (B, H, W, 2) view: every full-size op then runs along W (vectorised), where an
    # innermost axis of 2 made the broadcast adds ~10x slower. grid_sample and its backward read a grid
    # whose W axis is contiguous directly; the values are the same bits as in the (B, H, W, 2) layout.
    rows = m[:, :2].unsqueeze(-1).unsqueeze(-1)  # (B, 2, 3, 1, 1)
    grid = rows[:, :, 0] * xs + rows[:, :, 1] * ys
    grid += rows[:, :, 2]  # a fresh tensor: in place, one full-size buffer fewer
    if not (affine or (affine is None and is_affine(m))):
        den = m[:, 2, 0].view(b, 1, 1, 1) * xs + m[:, 2, 1].view(b, 1, 1, 1) * ys + m[:, 2, 2].view(b, 1, 1, 1)
        grid = torch.where(den > 1e-8, grid / den.clamp_min(1e-8), torch.full_like(den, 2.0))
    return grid.permute(0, 2, 3, 1)  # affine: w == 1 everywhere, no division


def warp_homography(
    source: torch.Tensor,
    h_out2src: torch.Tensor,
    out_hw: tuple[int, int],
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Resample ``source`` ``(B, C, h, w)`` onto an ``out_hw`` raster with one ``grid_sample``."""
    grid = homography_grid(h_out2src, out_hw, (source.shape[-2], source.shape[-1]))
    return F.grid_sample(source, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def warp_patch(
    patch: torch.Tensor,
    alpha: torch.Tensor | None,
    h_img2patch: torch.Tensor,
    out_hw: tuple[int, int],
    origin: torch.Tensor | None = None,
    affine: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``patch`` (``(B, C, h, w)``) and its ``alpha`` onto an ``out_hw`` image raster.

    ``alpha`` is ``None`` (opaque), ``(h, w)``, ``(1, h, w)`` or ``(B, 1, h, w)`` in [0, 1]. Patch and alpha
    are resampled together, premultiplied, in ONE ``grid_sample`` (zero padding gives the patch a soft,
    anti-aliased border). Returns the premultiplied patch ``(B, C, H, W)`` and coverage ``(B, 1, H, W)``.
    With ``origin`` ``(B, 2)`` the raster is a per-sample window of the image at that offset (see
    :func:`window_grid`; ``affine`` as there).
    """
    b, c, h, w = patch.shape
    if alpha is None:
        source = torch.cat([patch, patch.new_ones(b, 1, h, w)], dim=1)
    else:
        alpha_b = alpha.reshape(-1, 1, h, w).to(patch.dtype).expand(b, 1, h, w)
        source = torch.cat([patch * alpha_b, alpha_b], dim=1)
    if origin is None:
        warped = warp_homography(source, h_img2patch.to(patch.dtype), out_hw)
    else:
        grid = window_grid(h_img2patch.to(patch.dtype), origin, out_hw, (h, w), affine)
        warped = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # coverage depends only on alpha and the pose, never on patch pixels: detached, autograd skips a
    # whole backward branch through it
    return warped[:, :c], warped[:, c:].detach()


def composite(
    images: torch.Tensor, premultiplied: torch.Tensor, coverage: torch.Tensor, gain: torch.Tensor | None = None
) -> torch.Tensor:
    """``images`` under a premultiplied layer; ``gain`` ``(B,)`` scales the layer's colour (lighting)."""
    if gain is not None:
        premultiplied = premultiplied * gain.view(-1, 1, 1, 1)
    return torch.addcmul(premultiplied, images, 1.0 - coverage)


def warp_composite(
    images: torch.Tensor,
    patch: torch.Tensor,
    alpha: torch.Tensor | None,
    h_img2patch: torch.Tensor,
    gain: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`warp_patch` then :func:`composite`: returns the composite and the coverage."""
    premultiplied, coverage = warp_patch(patch, alpha, h_img2patch, (images.shape[-2], images.shape[-1]))
    return composite(images, premultiplied, coverage, gain), coverage


def region_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-sample weighted mean ``(B,)`` of ``values`` ``(B, 1, H, W)`` under ``weights`` (same shape)."""
    total = weights.sum(dim=(1, 2, 3)).clamp_min(1e-6)
    return (values * weights).sum(dim=(1, 2, 3)) / total


def translate_homography(h: Tensor, origin: Tensor) -> Tensor:
    """``h`` (image -> source) precomposed with window -> image translation by ``origin`` ``(B, 2)``."""
    shift = torch.eye(3, dtype=h.dtype, device=h.device).repeat(h.shape[0], 1, 1)
    shift[:, :2, 2] = origin.to(device=h.device, dtype=h.dtype)
    return h @ shift


def rotation_shear_scale_matrix(
    angle_deg: torch.Tensor,
    scale: torch.Tensor,
    shear_deg: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
    translation: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, 3, 3)`` affine: rotate by ``angle_deg``, shear x by ``shear_deg`` and scale by ``scale``
    about ``center`` (``(B, 2)``, default origin), then translate by ``translation`` (``(B, 2)``)."""
    a = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(a), torch.sin(a)
    sh = torch.tan(torch.deg2rad(shear_deg)) if shear_deg is not None else torch.zeros_like(a)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    # R @ Shear @ S, with Shear = [[1, sh], [0, 1]]
    m00 = cos * scale
    m01 = (cos * sh - sin) * scale
    m10 = sin * scale
    m11 = (sin * sh + cos) * scale
    if center is None:
        center = torch.stack([zero, zero], -1)
    cx, cy = center.unbind(-1)
    tx = cx - (m00 * cx + m01 * cy)
    ty = cy - (m10 * cx + m11 * cy)
    if translation is not None:
        tx = tx + translation[:, 0]
        ty = ty + translation[:, 1]
    return torch.stack(
        [torch.stack([m00, m01, tx], -1), torch.stack([m10, m11, ty], -1), torch.stack([zero, zero, one], -1)], -2
    )


_ADJUGATE_SIGN = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])


def invert_affine(m: Tensor) -> Tensor:
    """Closed-form inverse of ``(B, 3, 3)`` affine matrices; the bottom row stays exactly (0, 0, 1),
    which keeps :func:`homography_grid` on its cheaper affine path."""
    lin, t = m[:, :2, :2], m[:, :2, 2:]
    swapped = lin.flip(-1).flip(-2)  # [[d, c], [b, a]]
    products = lin * swapped  # [[ad, bc], [cb, da]]
    det = (products[:, 0, 0] - products[:, 0, 1]).view(-1, 1, 1)
    inverse = swapped.transpose(1, 2) * _ADJUGATE_SIGN.to(m.device, m.dtype) / det  # [[d, -b], [-c, a]] / det
    shift = -(inverse * t.transpose(1, 2)).sum(-1, keepdim=True)
    bottom = F.pad(m.new_zeros(m.shape[0], 1, 2), (0, 1), value=1.0)
    return torch.cat([torch.cat([inverse, shift], -1), bottom], 1)


def apply_homography_to_points(h: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map ``(B, N, 2)`` points through ``(B, 3, 3)`` homographies."""
    ones = torch.ones_like(points[..., :1])
    p = torch.cat([points, ones], -1) @ h.transpose(-1, -2)
    return p[..., :2] / p[..., 2:]


def tilt_quad(
    quads: torch.Tensor,
    axis_angle_deg: torch.Tensor,
    tilt_deg: torch.Tensor,
    focal: torch.Tensor | float,
    center: torch.Tensor,
) -> torch.Tensor:
    """Where the corners of a planar quad go when the plane is tilted out of the image plane.

    The plane is rotated by ``tilt_deg`` about an in-plane axis through ``center`` (``(B, 2)``) at
    ``axis_angle_deg`` from the x axis, then seen by a pinhole camera at distance ``focal`` (pixels)
    looking at ``center``: the viewing-angle change of a flat printed patch. ``(B, 4, 2)`` in and out.
    """
    phi = torch.deg2rad(axis_angle_deg).view(-1, 1)
    theta = torch.deg2rad(tilt_deg).view(-1, 1)
    ux, uy = torch.cos(phi), torch.sin(phi)
    x = quads[..., 0] - center[:, :1]
    y = quads[..., 1] - center[:, 1:]
    # Rodrigues rotation of (x, y, 0) about the unit axis (ux, uy, 0)
    along = x * ux + y * uy
    cos, sin = torch.cos(theta), torch.sin(theta)
    rx = x * cos + ux * along * (1 - cos)
    ry = y * cos + uy * along * (1 - cos)
    rz = (ux * y - uy * x) * sin
    f = focal if isinstance(focal, torch.Tensor) else torch.as_tensor(focal, dtype=quads.dtype, device=quads.device)
    f = f.reshape(-1, 1) if f.ndim else f
    depth = f + rz
    return torch.stack([f * rx / depth + center[:, :1], f * ry / depth + center[:, 1:]], dim=-1)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """Rec. 601 luma ``(B, 1, H, W)`` of RGB (or the channel mean of non-RGB) images."""
    if images.shape[1] == 3:
        w = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)
    return images.mean(1, keepdim=True)


def focal_from_fov(size: int, fov_deg: float) -> float:
    """Pinhole focal length (pixels) giving a horizontal field of view ``fov_deg`` over ``size`` px."""
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2)
