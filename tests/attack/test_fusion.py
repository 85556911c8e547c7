"""Stage fusion: RectangleImplanter + fusable KorniaAugment -> one FusedImplantWarp (like for like)."""

from __future__ import annotations

import logging

import pytest
import torch
from scipy import stats

from pandemonium.attack import Pipeline
from pandemonium.attack.replay import check_replay
from pandemonium.attack.stages.augment import KorniaAugment, build_kornia_augmentation
from pandemonium.attack.stages.fusion import FusedImplantWarp, fuse_stages
from pandemonium.attack.stages.implant import RectangleImplanter
from pandemonium.testing import check_stage

AUGS = {
    "ColorJiggle": {"brightness": 0.2, "contrast": 0.3, "saturation": 0.25, "p": 0.8},
    "RandomAffine": {"degrees": 15, "translate": [0.1, 0.05], "scale": [0.9, 1.1], "shear": 5, "p": 0.7},
}


@pytest.fixture()
def bank(tmp_path):
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "scenes.pt"
    torch.save({"images": torch.rand(12, 3, 32, 32, generator=generator), "class": torch.arange(12) % 3}, path)
    return str(path)


def kornia_pipeline(bank, augs=AUGS, fuse=True, model=None):
    stages = [RectangleImplanter(bank, scale=[0.75, 1.25]), KorniaAugment(augs)]
    return Pipeline(*stages, *([model] if model is not None else []), seed=3, fuse=fuse)


def test_fusable_config_runs_fused_and_round_trips_the_user_stages(bank):
    pipe = kornia_pipeline(bank)
    assert pipe.run_prefixes == ["0_RectangleImplanter+1_KorniaAugment"]
    assert isinstance(pipe.run_plan()[0][1], FusedImplantWarp)
    config = pipe.to_config()
    assert [s["_target_"].rsplit(".", 1)[-1] for s in config["stages"]] == ["RectangleImplanter", "KorniaAugment"]
    rebuilt = Pipeline.from_config(config)
    assert rebuilt.run_prefixes == pipe.run_prefixes and rebuilt.to_config() == config
    assert kornia_pipeline(bank, fuse=False).run_prefixes == ["0_RectangleImplanter", "1_KorniaAugment"]


@pytest.mark.parametrize(
    ("augs", "culprit"),
    [
        ({"ColorJiggle": {"brightness": 0.1, "hue": 0.0731}}, "hue=0.0731"),
        ({"RandomAffine": {"degrees": 3}, "RandomGaussianNoise": {"std": 0.0123}}, "RandomGaussianNoise"),
        ({"ColorJitter": {"contrast": 0.0417}}, "contrast=0.0417"),
    ],
)
def test_unfusable_config_stays_slow_and_the_log_names_the_operation(bank, caplog, augs, culprit):
    with caplog.at_level(logging.INFO, logger="pandemonium.attack.stages.fusion"):
        pipe = kornia_pipeline(bank, augs)
    assert pipe.run_prefixes == ["0_RectangleImplanter", "1_KorniaAugment"]
    assert culprit in caplog.text


def test_fused_parameters_follow_kornias_distributions(bank):
    n = 4000
    fused = FusedImplantWarp(bank, AUGS, scale=[0.75, 1.25])
    fused.set_seed(0, 0)
    ours = fused.sample_params(torch.Size([n, 3, 8, 8]), torch.device("cpu"))
    torch.manual_seed(0)
    jiggle = build_kornia_augmentation("test", "ColorJiggle", AUGS["ColorJiggle"])
    affine = build_kornia_augmentation("test", "RandomAffine", AUGS["RandomAffine"])
    colour_p, affine_p = AUGS["ColorJiggle"]["p"], AUGS["RandomAffine"]["p"]
    theirs_colour = jiggle.forward_parameters(torch.Size([n, 3, 32, 32]))
    theirs_affine = affine.forward_parameters(torch.Size([n, 3, 32, 32]))
    pairs = {
        "scene.brightness": (theirs_colour["brightness_factor"], theirs_colour["batch_prob"], 1.0),
        "scene.contrast": (theirs_colour["contrast_factor"], theirs_colour["batch_prob"], 1.0),
        "scene.saturation": (theirs_colour["saturation_factor"], theirs_colour["batch_prob"], 1.0),
        "scene.angle": (theirs_affine["angle"], theirs_affine["batch_prob"], 0.0),
        "scene.scale_x": (theirs_affine["scale"][:, 0], theirs_affine["batch_prob"], 1.0),
        "scene.shear_x": (theirs_affine["shear_x"], theirs_affine["batch_prob"], 0.0),
        "scene.translate_x": (theirs_affine["translations"][:, 0] / 32, theirs_affine["batch_prob"], 0.0),
        "scene.translate_y": (theirs_affine["translations"][:, 1] / 32, theirs_affine["batch_prob"], 0.0),
    }
    for key, (theirs, applied, identity) in pairs.items():
        # Kornia only draws values for the rows it applies (batch_prob); ours store identity elsewhere
        theirs = theirs.flatten()[: int(applied.sum())] if theirs.numel() < n else theirs[applied.bool()]
        mine = ours[key][ours[key] != identity]
        assert stats.ks_2samp(mine.numpy(), theirs.numpy()).pvalue > 1e-3, key
        assert float(mine.min()) >= float(theirs.min()) - 0.02 and float(mine.max()) <= float(theirs.max()) + 0.02
    applied_colour = (ours["scene.brightness"] != 1.0).float().mean()
    applied_affine = (ours["scene.angle"] != 0.0).float().mean()
    assert abs(float(applied_colour) - colour_p) < 0.03 and abs(float(applied_affine) - affine_p) < 0.03
    assert abs(float(ours["scene.brightness_first"].mean()) - 0.5) < 0.03  # Kornia's randperm: either first


def test_fused_output_matches_kornia_for_fixed_parameters(bank):
    # degenerate ranges make every draw deterministic: both paths then render the same scene
    augs = {
        "ColorJiggle": {"brightness": [1.1, 1.1], "p": 1.0},  # one step: Kornia's order cannot matter
        "RandomAffine": {"degrees": [12.0, 12.0], "scale": [1.05, 1.05], "translate": [0.0, 0.0], "p": 1.0},
    }
    patch = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    fast, _ = kornia_pipeline(bank, augs)(patch)
    slow, _ = kornia_pipeline(bank, augs, fuse=False)(patch)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # borders: padding conventions differ
    assert (fast - slow)[inner].abs().mean() < 0.02
    assert (fast - slow)[inner].abs().median() < 1e-3


def test_fused_step_replays_exactly_and_passes_the_stage_contract(bank):
    patch = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    pipe = kornia_pipeline(bank)
    y, _ = pipe(patch)
    again, _ = pipe(patch, params=pipe.get_last_sample_as_dict())
    assert torch.equal(y, again)
    check_replay(pipe, patch)
    stage = FusedImplantWarp(bank, AUGS, scale=[0.75, 1.25])
    check_stage(stage, patch)
    # one row re-rendered alone equals its row in the batch
    sample = pipe.get_last_sample_as_dict()
    row = {k: v[2:3] for k, v in sample.items()}
    alone, _ = pipe(patch[2:3], params=row)
    assert torch.equal(alone[0], y[2])


def test_gradients_reach_the_patch_only_through_its_window(bank):
    patch = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    pipe = kornia_pipeline(bank)
    y, kwargs = pipe(patch)
    mask = kwargs["targets"]["patch_mask"] > 0
    (inside,) = torch.autograd.grad(y[mask.expand_as(y)].sum(), patch, retain_graph=True)
    assert inside.abs().sum() > 0
    (outside,) = torch.autograd.grad(y[~mask.expand_as(y)].sum(), patch, allow_unused=True)
    assert outside is None or float(outside.abs().max()) < 1e-6 * float(inside.abs().max()) + 1e-12
    assert not any(p.requires_grad for p in pipe.run_plan()[0][1].buffers())
    assert fuse_stages(list(pipe.stages))[0][0] == (0, 1)
