import json

import pytest
import torch

from pandemonium.attack.stages.base import StageError
from pandemonium.attack.stages.fused import FusedImplantAugment, adjust_photometric
from pandemonium.attack.stages.implant import RectangleImplanter

FULL = dict(
    scale=[0.8, 1.5], degrees=20, translate=0.1, shear=5, jitter_scale=[0.9, 1.1], perspective=0.1,
    brightness=0.1, contrast=0.1, saturation=0.1, noise=0.02, blur_sigma=[0.2, 1.0], blur_p=0.5,
)


@pytest.fixture
def bank_path(tmp_path):
    path = tmp_path / "scenes.pt"
    torch.save({"images": torch.rand(6, 3, 32, 32), "class": torch.arange(6), "split": ["train"] * 4 + ["eval"] * 2}, path)
    return str(path)


def test_fused_replay_control_targets(bank_path):
    stage = FusedImplantAugment(bank_path, **FULL)
    stage.set_seed(0, 1)
    patch = torch.rand(5, 3, 8, 8)
    y, kwargs = stage(patch, extra=3)
    assert y.shape == (5, 3, 32, 32) and kwargs["extra"] == 3
    assert 0 <= y.min() and y.max() <= 1
    sample = stage.get_last_sample_as_dict()
    assert {"angle", "corners_0_0", "scene.brightness", "scene.noise_seed"} <= set(sample)
    assert torch.equal(stage(patch, params=sample)[0], y)
    control, ckw = stage(patch, control=True)
    assert torch.equal(ckw["targets"]["image_index"], kwargs["targets"]["image_index"])
    # control = same scene and photometrics, no patch: identical to running with an invisible patch
    invisible = dict(sample)
    zero_patch_stage = FusedImplantAugment(bank_path, mask=[[0.0] * 8] * 8, **FULL)
    ghost, _ = zero_patch_stage(patch, params=invisible)
    assert torch.allclose(control, ghost, atol=1e-6)
    assert not torch.allclose(control, y)
    json.dumps(stage.params)
    rebuilt = FusedImplantAugment(**stage.params)
    rebuilt.set_seed(0, 1)
    assert torch.equal(rebuilt(patch)[0], y)


def test_fused_without_jitter_matches_rectangle_implanter(bank_path):
    fused = FusedImplantAugment(bank_path, scale=[0.5, 2.0])
    plain = RectangleImplanter(bank_path, scale=[0.5, 2.0])
    fused.set_seed(0, 0)
    patch = torch.rand(4, 3, 8, 8)
    y_fused, kw = fused(patch)
    sample = fused.get_last_sample_as_dict()
    keep = {k: sample[k] for k in ("image_index", "scale", "offset_x", "offset_y")}
    y_plain, kw_plain = plain(patch, params=keep)
    assert torch.allclose(y_fused, y_plain, atol=1e-5)
    assert torch.allclose(kw["targets"]["patch_boxes"], kw_plain["targets"]["patch_boxes"], atol=1e-4)


def test_rotation_jitter_rotates_the_patch(bank_path):
    stage = FusedImplantAugment(bank_path, degrees=90)
    stage.set_seed(0, 0)
    patch = torch.zeros(1, 3, 8, 8)
    patch[..., :4] = 1.0  # left half white
    base = {"image_index": [0], "scale": [2.0], "offset_x": [0.5], "offset_y": [0.5], "shear": [0.0], "zoom": [1.0],
            "shift_x": [0.0], "shift_y": [0.0], **{f"corners_{i}_{j}": [0.0] for i in range(4) for j in range(2)},
            "scene.brightness": [0.0], "scene.contrast": [1.0], "scene.saturation": [1.0], "scene.noise_std": [0.0],
            "scene.blur_sigma": [0.0], "scene.noise_seed": [0]}
    stage.bank.images.zero_()
    upright, _ = stage(patch, params={**base, "angle": [0.0]})
    turned, kw = stage(patch, params={**base, "angle": [90.0]})
    # patch occupies [8, 24] x [8, 24]; unrotated the white half is on the left, rotated by +90 on top
    assert upright[0, 0, 16, 10] > 0.99 and upright[0, 0, 16, 21] < 0.01
    assert turned[0, 0, 10, 16] > 0.99 and turned[0, 0, 21, 16] < 0.01
    assert kw["targets"]["patch_boxes"][0].tolist() == pytest.approx([8.0, 8.0, 24.0, 24.0], abs=1e-3)


def test_photometric_ops():
    x = torch.full((2, 3, 4, 4), 0.5)
    x[:, 0] = 0.8
    y = adjust_photometric(x, torch.tensor([0.1, 0.0]), torch.tensor([1.0, 2.0]), None)
    assert y[0, 1, 0, 0].item() == pytest.approx(0.6)
    assert y[1, 1, 0, 0].item() == pytest.approx(1.0)
    grey = adjust_photometric(x, saturation=torch.tensor([0.0, 1.0]))
    assert torch.allclose(grey[0, 0], grey[0, 1]) and torch.allclose(grey[1], x[1])


def test_gradient_reaches_patch_through_everything(bank_path):
    stage = FusedImplantAugment(bank_path, **FULL)
    stage.set_seed(0, 0)
    patch = torch.rand(3, 3, 8, 8, requires_grad=True)
    stage(patch)[0].sum().backward()
    assert patch.grad is not None and patch.grad.abs().sum() > 0


def test_eval_split_and_dicts(bank_path):
    stage = FusedImplantAugment(bank_path, **FULL)
    stage.set_seed(0, 0)
    _, kw = stage({"a": torch.rand(16, 3, 8, 8), "b": torch.rand(16, 3, 4, 4)}, evaluate=True)
    assert set(kw["targets"]["image_index"].tolist()) <= {4, 5}
    assert set(kw["targets"]["patch_boxes"]) == {"a", "b"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"perspective": 0.9}, "perspective"),
        ({"blur_kernel": 4}, "blur_kernel"),
        ({"brightness": -0.1}, "brightness"),
        ({"scale": [2.0, 1.0]}, "increasing"),
    ],
)
def test_bad_arguments(bank_path, kwargs, message):
    with pytest.raises(StageError, match=message) as err:
        FusedImplantAugment(bank_path, **kwargs)
    assert "FusedImplantAugment" in str(err.value)


def test_patch_too_large(bank_path):
    stage = FusedImplantAugment(bank_path, scale=[1.0, 3.0])
    stage.set_seed(0, 0)
    with pytest.raises(StageError, match=r"FusedImplantAugment.*larger than the 32x32 scenes"):
        stage(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("dict_input", [False, True], ids=["tensor", "dict"])
@pytest.mark.parametrize("kwargs", [FULL, {}], ids=["full", "plain"])
def test_fused_passes_check_stage(bank_path, dict_input, kwargs):
    from pandemonium.testing.stages import check_stage

    stage = FusedImplantAugment(bank_path, **kwargs)
    stage.set_seed(0, 1)
    x = {"a": torch.rand(4, 3, 8, 8), "b": torch.rand(4, 3, 6, 6)} if dict_input else torch.rand(4, 3, 8, 8)
    check_stage(stage, x)


@pytest.mark.parametrize("kwargs", [FULL, {**FULL, "blur_p": 1.0, "blur_kernel": 7, "scale": [0.5, 0.8]}, {}],
                         ids=["full", "always_blur", "plain"])
def test_windowed_fast_path_equals_whole_image_compositing(bank_path, kwargs):
    stage = FusedImplantAugment(bank_path, **kwargs)
    stage.set_seed(4, 1)
    patch = torch.rand(16, 3, 8, 8, requires_grad=True)
    fast, kw = stage(patch)
    sample = stage.get_last_sample_as_dict()
    stage.use_windows = False
    reference, kw_ref = stage(patch, params=sample)
    assert torch.allclose(fast, reference, atol=1e-5)
    assert torch.allclose(kw["targets"]["patch_mask"], kw_ref["targets"]["patch_mask"], atol=1e-6)
    g_fast = torch.autograd.grad(fast.square().sum(), patch)[0]
    g_ref = torch.autograd.grad(reference.square().sum(), patch)[0]
    assert torch.allclose(g_fast, g_ref, atol=1e-4)
