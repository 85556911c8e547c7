"""Create stages: every one passes the contract checker, and each does what its name says."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import ImageCms

from pandemonium.attack.stages.base import StageError
from pandemonium.attack.stages.create import ChannelStack, RandomScroll, ReflectPadTranslate, Resize, Tile
from pandemonium.attack.stages.frequency import HighPassFilter, LowPassFilter, SpectrumNoise
from pandemonium.attack.stages.registry import resolve_stage_class
from pandemonium.attack.stages.softproof import SoftProof
from pandemonium.testing import check_stage

STAGES = [
    lambda: Resize(6),
    lambda: Resize([4, 6], mode="nearest"),
    lambda: ChannelStack(3),
    lambda: Tile([2, 1]),
    lambda: RandomScroll(),
    lambda: ReflectPadTranslate(2),
    lambda: HighPassFilter(0.2),
    lambda: HighPassFilter(0.2, kind="ideal", keep_mean=False, clamp=False),
    lambda: LowPassFilter(0.1),
    lambda: SpectrumNoise(0.3),
    lambda: SoftProof(lut_size=5),
]


@pytest.mark.parametrize("make", STAGES, ids=[f"{i}-{make().name}" for i, make in enumerate(STAGES)])
def test_contract(make, patch_batch):
    check_stage(make(), patch_batch)


def test_channel_stack_contract_on_grey():
    check_stage(ChannelStack(3), torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1)))


def test_all_create_stages_are_registered():
    for name in ["Resize", "ChannelStack", "Tile", "RandomScroll", "ReflectPadTranslate", "HighPassFilter",
                 "LowPassFilter", "SpectrumNoise", "SoftProof"]:  # fmt: skip
        assert resolve_stage_class(name).name == name


def test_resize_tile_channel_stack_shapes(patch_batch):
    assert Resize([4, 6])(patch_batch)[0].shape == (3, 3, 4, 6)
    assert Tile([2, 3])(patch_batch)[0].shape == (3, 3, 16, 24)
    grey = patch_batch[:, :1]
    stacked = ChannelStack()(grey)[0]
    assert stacked.shape == (3, 3, 8, 8) and torch.equal(stacked[:, 2], grey[:, 0])
    with pytest.raises(StageError, match="ChannelStack.*1 or 3 channels, got 2"):
        ChannelStack()(patch_batch[:, :2])
    with pytest.raises(StageError, match="Resize.*size"):
        Resize(0)


def test_random_scroll_is_a_per_sample_roll(patch_batch):
    stage = RandomScroll()
    y, _ = stage(patch_batch)
    sample = stage.get_last_sample_as_dict()
    for i in range(patch_batch.shape[0]):
        shift = (int(sample["shift_0"][i]), int(sample["shift_1"][i]))
        assert torch.equal(y[i], torch.roll(patch_batch[i], shifts=shift, dims=(1, 2)))
    assert torch.equal(stage(patch_batch, evaluate=True)[0], patch_batch)


def test_reflect_pad_translate(patch_batch):
    stage = ReflectPadTranslate(2)
    zero = {"offset_0": [0, 0, 0], "offset_1": [0, 0, 0]}
    assert torch.equal(stage(patch_batch, params=zero)[0], patch_batch)
    down = {"offset_0": [1, 1, 1], "offset_1": [0, 0, 0]}
    moved = stage(patch_batch, params=down)[0]
    assert torch.equal(moved[:, :, 1:], patch_batch[:, :, :-1])
    assert torch.equal(moved[:, :, 0], patch_batch[:, :, 1])  # reflection, not zeros
    assert torch.equal(stage(patch_batch, evaluate=True)[0], patch_batch)
    with pytest.raises(StageError, match="max_shift=8 must be smaller"):
        ReflectPadTranslate(8)(patch_batch)


def _sine(frequency: float, size: int = 32) -> torch.Tensor:
    """Horizontal sine grating at ``frequency`` cycles/pixel, values in [0.25, 0.75]."""
    columns = torch.arange(size, dtype=torch.float32)
    row = 0.5 + 0.25 * torch.sin(2 * math.pi * frequency * columns)
    return row.expand(1, 1, size, size).clone()


def test_high_and_low_pass_are_complementary(patch_batch):
    high = HighPassFilter(0.15, keep_mean=False, clamp=False)(patch_batch)[0]
    low = LowPassFilter(0.15)(patch_batch)[0]
    assert torch.allclose(high + low, patch_batch, atol=1e-5)


def test_high_pass_removes_low_and_keeps_high_frequencies():
    stage = HighPassFilter(0.15, keep_mean=False, clamp=False)
    low_frequency = _sine(2 / 32)
    high_frequency = _sine(12 / 32)
    low_out = stage(low_frequency)[0]
    high_out = stage(high_frequency)[0]
    assert float(low_out.abs().max()) < 0.05  # 0.25 amplitude removed
    assert float((high_out - (high_frequency - 0.5)).abs().max()) < 0.02  # kept, mean removed
    constant = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(HighPassFilter(0.15)(constant)[0], constant, atol=1e-6)  # keep_mean


def test_low_pass_removes_high_frequencies():
    out = LowPassFilter(0.1)(_sine(12 / 32))[0]
    assert float((out - 0.5).abs().max()) < 0.01
    # Gaussian response: gain exp(-ln2 (f / cutoff)^2), 1/2 at the cutoff
    for frequency in (1 / 32, 3 / 32):
        gain = math.exp(-math.log(2) * (frequency / 0.1) ** 2)
        out = LowPassFilter(0.1)(_sine(frequency))[0]
        assert abs(float((out - 0.5).abs().max()) - 0.25 * gain) < 2e-3


def test_spectrum_noise_keeps_the_mean_and_is_train_only(patch_batch):
    stage = SpectrumNoise(0.5, clamp=False)
    y, _ = stage(patch_batch)
    sample = stage.get_last_sample_as_dict()
    assert not torch.equal(y, patch_batch)
    assert torch.allclose(y.mean(dim=(2, 3)), patch_batch.mean(dim=(2, 3)), atol=1e-5)
    assert torch.equal(stage(patch_batch, evaluate=True)[0], patch_batch)
    silent = {**sample, "amplitude": [0.0] * 3}
    assert torch.allclose(stage(patch_batch, params=silent)[0], patch_batch, atol=1e-5)


def _rgb(*colours):
    return torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, len(colours), 1)


def test_soft_proof_compresses_the_gamut_in_eval_only():
    stage = SoftProof(lut_size=9)
    colours = _rgb((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.5, 0.5, 0.5), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    assert torch.equal(stage(colours)[0], colours)  # training: identity
    proofed = stage(colours, evaluate=True)[0][0, :, :, 0].T
    red, green, grey, white, black = proofed
    assert float(red[0] - red[1:].max()) < 0.9  # less saturated than pure red
    assert float(green[1] - green[[0, 2]].max()) < 0.9
    assert float((grey - grey.mean()).abs().max()) < 0.02 and abs(float(grey.mean()) - 0.5) < 0.1
    assert float(white.min()) < 1.0 and float(black.max()) > 0.0  # paper white, ink black


def test_soft_proof_with_a_user_profile(tmp_path):
    path = tmp_path / "srgb.icc"
    path.write_bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    stage = SoftProof(icc_profile=str(path), lut_size=9)
    colours = _rgb((1.0, 0.0, 0.0), (0.2, 0.6, 0.4), (0.5, 0.5, 0.5))
    assert torch.allclose(stage(colours, evaluate=True)[0], colours, atol=0.03)  # sRGB proof ~ identity
    with pytest.raises(StageError, match="ICC profile .*nope.icc.* does not exist"):
        SoftProof(icc_profile=str(tmp_path / "nope.icc"))
    with pytest.raises(StageError, match="needs RGB"):
        stage(torch.rand(1, 1, 4, 4), evaluate=True)
