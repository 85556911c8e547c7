"""Placement maths done on the host (NumPy) equals the tensor path it replaces, bit for bit."""

from __future__ import annotations

import torch

from pandemonium.attack.stages.geometry import box_to_source_homography


def test_host_box_homography_equals_the_tensor_path():
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x0y0 = torch.rand(500, 2, generator=generator, dtype=dtype) * 50
        boxes = torch.cat([x0y0, x0y0 + 1 + torch.rand(500, 2, generator=generator, dtype=dtype) * 30], 1)
        host = box_to_source_homography(boxes, (13, 17))  # CPU, no gradient: the NumPy path
        tensor = box_to_source_homography(boxes.clone().requires_grad_(True), (13, 17)).detach()
        assert host.dtype == tensor.dtype == dtype
        assert torch.equal(host, tensor)
