"""The one-node composite (window_composite.py) equals the op-by-op chain bit for bit: image, targets, gradient."""

from __future__ import annotations

import pytest
import torch

from pandemonium.attack.stages.fused import FusedImplantAugment
from pandemonium.attack.stages.fusion import FusedImplantWarp
from pandemonium.attack.stages.implant import (
    PerspectiveImplanter,
    RectangleImplanter,
    ScaleToBoxImplanter,
)

COLOUR = {"ColorJiggle": {"brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "p": 0.8}}
AFFINE = {"RandomAffine": {"degrees": 20, "translate": [0.1, 0.1], "scale": [0.8, 1.2], "shear": 5, "p": 0.9}}

STAGES = {
    "rectangle": lambda bank: RectangleImplanter(bank, scale=[0.8, 2.5]),
    "rectangle_circle": lambda bank: RectangleImplanter(bank, scale=[0.8, 2.5], mask="circle"),
    "scale_to_box": lambda bank: ScaleToBoxImplanter(bank, scale=[0.6, 0.9]),
    "perspective": lambda bank: PerspectiveImplanter(bank),
    "fused_plain": lambda bank: FusedImplantAugment(bank, scale=[0.8, 2.0], degrees=15, jitter_scale=[0.9, 1.1]),
    "fused_demo": lambda bank: FusedImplantAugment(
        bank, degrees=10, jitter_scale=[0.9, 1.0], brightness=0.3, contrast=0.3, saturation=0.3, noise=0.05,
        scale=[1.0, 2.5],
    ),
    "fused_perspective_mask": lambda bank: FusedImplantAugment(
        bank, scale=[1.0, 2.0], perspective=0.1, shear=5, translate=0.1, brightness=0.4, mask="circle",
    ),
    "warp_colour_first": lambda bank: FusedImplantWarp(bank, {**COLOUR, **AFFINE}, scale=[0.8, 2.0]),
    "warp_affine_first": lambda bank: FusedImplantWarp(bank, {**AFFINE, **COLOUR}, scale=[0.8, 2.0]),
    "warp_colour_only": lambda bank: FusedImplantWarp(bank, COLOUR, scale=[0.8, 2.0]),
    "warp_affine_only": lambda bank: FusedImplantWarp(bank, AFFINE, scale=[0.8, 2.0], mask="circle"),
    "warp_jitter": lambda bank: FusedImplantWarp(
        bank, {"ColorJitter": {"brightness": 0.4, "saturation": 0.4}, **AFFINE}, scale=[0.8, 2.0]
    ),
}


def _run(stage, patch, params, weights):
    """Image, targets and the gradient of a weighted sum (plus a second use of the patch, as a TV loss does)."""
    leaf = patch.detach().clone().requires_grad_(True)
    out, kwargs = stage(leaf.expand(weights.shape[0], -1, -1, -1), params=params)
    ((out * weights).sum() + kwargs["patch"].diff(dim=-1).abs().sum()).backward()
    return out.detach(), kwargs["targets"], leaf.grad


@pytest.mark.parametrize("name", list(STAGES))
@pytest.mark.parametrize("windows", [True, False], ids=["windows", "whole_image"])
def test_one_node_composite_is_bit_identical_to_the_op_chain(scene_bank, name, windows):
    stage = STAGES[name](scene_bank)
    stage.use_windows = windows
    stage.set_seed(3, 1)
    generator = torch.Generator().manual_seed(1)
    patch = torch.rand(1, 3, 8, 8, generator=generator)
    weights = torch.randn(6, 3, 32, 32, generator=generator)
    stage(patch.expand(6, -1, -1, -1))
    sample = stage.get_last_sample_as_dict()
    fast = _run(stage, patch, sample, weights)
    stage._single_patch_step = lambda patches, control: False  # the op-by-op chain, as for several patches
    slow = _run(stage, patch, sample, weights)
    assert torch.equal(fast[0], slow[0])
    assert torch.equal(fast[1]["patch_mask"], slow[1]["patch_mask"])
    assert torch.equal(fast[1]["patch_boxes"], slow[1]["patch_boxes"])
    assert fast[2].abs().sum() > 0
    assert torch.equal(fast[2], slow[2])


def test_no_gradient_wanted_and_a_detached_patch(scene_bank):
    stage = STAGES["fused_demo"](scene_bank)
    stage.set_seed(0, 0)
    patch = torch.rand(4, 3, 8, 8)
    out, kwargs = stage(patch)
    assert not out.requires_grad and not kwargs["targets"]["patch_mask"].requires_grad
    with torch.no_grad():
        again, _ = stage(patch, params=stage.get_last_sample_as_dict())
    assert torch.equal(again, out)
