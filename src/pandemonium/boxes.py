"""Box geometry shared by the models (NMS, matching), the patch evaluation and the transfer statistics.

Boxes are ``xyxy`` in pixels, the layout of DEVELOPERS.md. Written here rather than taken from
torchvision, whose compiled ops do not load with the CPU torch build this project supports.
"""

from __future__ import annotations

import torch

__all__ = ["box_iou"]


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
