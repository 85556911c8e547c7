"""Per-sample placement maths on the host, in NumPy float64.

A placement is a few dozen elementwise steps on ``(B,)`` values (one per sample). As tensor ops each is
a dispatched op of a few microseconds (and on a GPU a kernel launch); in NumPy each costs about one,
so the stages compute placements here and hand back only the finished matrices. Every step is
elementwise, so a row's result does not depend on the rest of its batch (single-row re-rendering).
Same conventions as :mod:`pandemonium.attack.stages.geometry`.

Example:
    >>> import torch
    >>> box = torch.tensor([[4.0, 4.0, 12.0, 12.0]])
    >>> zero, one = torch.zeros(1), torch.ones(1)
    >>> h, bounds = posed_box_placement(box, zero, 2 * one, zero, zero, zero, (8, 8))  # zoom 2 about the centre
    >>> h.shape, bounds.tolist()
    (torch.Size([1, 3, 3]), [[0.0, 0.0, 16.0, 16.0]])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["host_arrays", "posed_box_placement"]


def host_arrays(*values: Tensor) -> list[np.ndarray] | None:
    """NumPy views of ``values`` when all are CPU tensors without gradient (else ``None``): per-step maths on
    ``(B,)``-sized values then costs about a microsecond per step instead of a dispatched op. Elementwise
    float steps give the same bits in NumPy as in torch (both round each IEEE operation once)."""
    if all(v.device.type == "cpu" and not v.requires_grad for v in values):
        return [v.numpy() for v in values]
    return None


def _host(*values: Tensor) -> np.ndarray:
    """``(k, B)`` float64 array of ``k`` ``(B,)`` tensors: one stack, one host copy (none when they are
    CPU tensors without gradient, the usual case: NumPy reads them in place)."""
    if all(v.device.type == "cpu" and not v.requires_grad for v in values):
        return np.stack([v.numpy() for v in values]).astype(np.float64)
    return torch.stack([v.detach() for v in values]).cpu().double().numpy()


def posed_box_placement(
    box: Tensor, angle_deg: Tensor, zoom: Tensor, shear_deg: Tensor, shift_x: Tensor, shift_y: Tensor,
    patch_hw: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """A patch stretched onto ``box`` (``(B, 4)`` xyxy), then rotated by ``angle_deg``, x-sheared by
    ``shear_deg`` and zoomed by ``zoom`` about the box centre and shifted by ``shift`` x the box size.

    Returns the image -> patch homography ``(B, 3, 3)`` (affine) and the xyxy bounds ``(B, 4)`` of the
    posed box, in ``box``'s dtype, on the CPU.
    """
    h, w = patch_hw
    x0, y0, x1, y1 = _host(*box.unbind(-1))
    angle, zoom_, shear, sx, sy = _host(angle_deg, zoom, shear_deg, shift_x, shift_y)
    bw, bh = x1 - x0, y1 - y0
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    rad = np.deg2rad(angle)
    cos, sin, tan = np.cos(rad), np.sin(rad), np.tan(np.deg2rad(shear))
    # R @ Shear @ S about the centre, Shear = [[1, tan], [0, 1]], then the shift
    m00, m01 = cos * zoom_, (cos * tan - sin) * zoom_
    m10, m11 = sin * zoom_, (sin * tan + cos) * zoom_
    tx = cx - (m00 * cx + m01 * cy) + sx * bw
    ty = cy - (m10 * cx + m11 * cy) + sy * bh
    # image -> patch = (box stretch)^-1 @ pose^-1, both closed form
    det = m00 * m11 - m01 * m10
    i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
    i02, i12 = -(i00 * tx + i01 * ty), -(i10 * tx + i11 * ty)
    ax, ay = w / bw, h / bh
    zero, one = np.zeros_like(ax), np.ones_like(ax)
    matrix = np.stack(
        [ax * i00, ax * i01, ax * (i02 - x0), ay * i10, ay * i11, ay * (i12 - y0), zero, zero, one], -1
    ).reshape(-1, 3, 3)
    # bounds of the posed corners (TL, TR, BR, BL)
    qx = np.stack([x0, x1, x1, x0], -1)
    qy = np.stack([y0, y0, y1, y1], -1)
    px = m00[:, None] * qx + m01[:, None] * qy + tx[:, None]
    py = m10[:, None] * qx + m11[:, None] * qy + ty[:, None]
    bounds = np.stack([px.min(1), py.min(1), px.max(1), py.max(1)], -1)
    return torch.from_numpy(matrix).to(box.dtype), torch.from_numpy(bounds).to(box.dtype)
