"""Box geometry shared by the models (NMS, matching), the patch evaluation and the transfer statistics.

Boxes are ``xyxy`` in pixels, the layout of DEVELOPERS.md. Written here rather than taken from
torchvision, whose compiled ops do not load with the CPU torch build this project supports.

:func:`box_iou` (torch) and :func:`box_iou_np` (NumPy) are the same formula, step for step in the
inputs' dtype, so they give the same bits: each step is one IEEE operation (max, min, -, *, /),
correctly rounded by both libraries. The NumPy twin serves the per-image host loops (NMS, matching
detections to ground truth), where a dispatched torch op on a few boxes costs several microseconds
and a NumPy one about one.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["box_iou", "box_iou_np", "host_array"]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every box in ``a`` ``(..., N, 4)`` with every box in ``b`` ``(..., M, 4)`` → ``(..., N, M)``.

    Leading dimensions broadcast, so one call serves a single image ``(N, 4)`` × ``(M, 4)`` and a batch
    ``(B, N, 4)`` × ``(B, M, 4)``. Degenerate boxes have zero area and IoU 0.

    >>> box_iou(torch.tensor([[0., 0., 2., 2.]]), torch.tensor([[1., 0., 3., 2.], [5., 5., 6., 6.]]))
    tensor([[0.3333, 0.0000]])
    """
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a[..., :, None] + area_b[..., None, :] - inter).clamp(min=1e-9)


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`box_iou` on float NumPy arrays, with the same bits (see the module docstring).

    >>> box_iou_np(np.array([[0., 0., 2., 2.]], np.float32), np.array([[1., 0., 3., 2.]], np.float32))
    array([[0.33333334]], dtype=float32)
    """
    dtype = np.result_type(a, b)
    # typed scalars keep every step in the arrays' dtype (NumPy < 2 computes a NumPy scalar and a Python
    # float in float64)
    zero, eps = dtype.type(0), dtype.type(1e-9)
    # one coordinate at a time: (..., N, M) steps, where (..., N, M, 2) ones would run NumPy's inner loop
    # over 2 elements; the same elementwise operations either way
    ax0, ay0, ax1, ay1 = (a[..., :, None, k] for k in range(4))
    bx0, by0, bx1, by1 = (b[..., None, :, k] for k in range(4))
    with np.errstate(all="ignore"):  # overflow, inf - inf: torch gives inf / NaN silently, so do we
        inter = (np.maximum(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), zero)
                 * np.maximum(np.minimum(ay1, by1) - np.maximum(ay0, by0), zero))
        union = _area_np(a)[..., :, None] + _area_np(b)[..., None, :] - inter
        return inter / np.maximum(union, eps)


def _area_np(b: np.ndarray) -> np.ndarray:
    zero = b.dtype.type(0)  # in b's own dtype, as in box_iou
    return np.maximum(b[..., 2] - b[..., 0], zero) * np.maximum(b[..., 3] - b[..., 1], zero)


def host_array(t: torch.Tensor) -> np.ndarray:
    """``t`` as a NumPy array for the host loops (a view of a CPU tensor without a copy); bfloat16, which
    NumPy lacks, as float32."""
    if t.requires_grad:
        t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return (t if t.device.type == "cpu" else t.cpu()).numpy()
