"""Per-step maths on (B,)-sized CPU values runs in NumPy; it must give the torch path's bits exactly."""

from __future__ import annotations

import pytest
import torch

from pandemonium.attack.stages.fused import colour_matrix
from pandemonium.attack.stages.fusion import FusedImplantWarp
from pandemonium.attack.stages.implant_args import size_and_offset
from pandemonium.attack.stages.windows import patch_windows


def _values(n: int, low: float, high: float, seed: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=torch.Generator().manual_seed(seed))


def _graded(t: torch.Tensor) -> torch.Tensor:
    # a tensor that wants a gradient takes the torch path
    return t.clone().requires_grad_(True)


@pytest.mark.parametrize("channels, with_saturation", [(3, True), (3, False), (1, True)])
def test_colour_matrix_host_equals_torch(channels, with_saturation):
    b, c, s = _values(500, -0.4, 0.4, 0), _values(500, 0.6, 1.4, 1), _values(500, 0.6, 1.4, 2)
    s = s if with_saturation else None
    host = colour_matrix(b, c, s, channels)
    graded = colour_matrix(_graded(b), _graded(c), _graded(s) if s is not None else None, channels)
    assert torch.equal(host[0], graded[0].detach()) and torch.equal(host[1], graded[1].detach())


@pytest.mark.parametrize("colour", ["ColorJiggle", "ColorJitter"])
@pytest.mark.parametrize("channels", [3, 1])
def test_fused_warp_colour_matrix_host_equals_torch(scene_bank, colour, channels):
    stage = FusedImplantWarp(scene_bank, {colour: {"brightness": 0.3, "saturation": 0.3}})
    scene = {n: _values(400, 0.5, 1.5, i) for i, n in enumerate(("brightness", "contrast", "saturation"))}
    scene["brightness_first"] = (_values(400, 0, 1, 7) < 0.5).float()
    host = stage._colour_matrix(scene, channels, torch.float32)
    graded = stage._colour_matrix({k: _graded(v) for k, v in scene.items()}, channels, torch.float32)
    assert torch.equal(host[0], graded[0].detach()) and torch.equal(host[1], graded[1].detach())


def test_size_and_offset_and_windows_host_equal_torch():
    n = 2000
    size_w, size_h = _values(n, 1.0, 40.0, 0), _values(n, 1.0, 30.0, 1)
    ox, oy = _values(n, 0.0, 1.0, 2), _values(n, 0.0, 1.0, 3)
    host = size_and_offset("S", size_w, size_h, ox, oy, (48, 64), "patch")
    graded = size_and_offset("S", *(_graded(v) for v in (size_w, size_h, ox, oy)), (48, 64), "patch")
    assert torch.equal(host, graded.detach())
    boxes = host + 3 * torch.randn(n, 4, generator=torch.Generator().manual_seed(4))  # some outside the image
    for margin in (0, 3):
        origin, size = patch_windows(boxes, (48, 64), margin)
        origin_t, size_t = patch_windows(_graded(boxes), (48, 64), margin)
        assert size == size_t and torch.equal(origin, origin_t)


def test_host_size_check_still_names_the_patch():
    from pandemonium.attack.stages.base import StageError

    one = torch.ones(2)
    with pytest.raises(StageError, match="scaled patch of 70.0x1.0"):
        size_and_offset("S", torch.tensor([70.0, 2.0]), one, one, one, (48, 64), "scaled patch")

