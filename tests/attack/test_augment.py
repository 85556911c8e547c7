import json

import pytest
import torch
import yaml

from pandemonium.attack.stages.augment import KorniaAugment, ViewingAngleTilt, seeded_global_rng
from pandemonium.attack.stages.base import StageError

SPEC = {
    "ColorJiggle": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05, "p": 0.5},
    "RandomAffine": {"degrees": 15, "translate": [0.1, 0.1], "scale": [0.9, 1.1], "p": 0.7},
}


def test_kornia_stage_replays_exactly_and_leaves_global_rng_alone():
    x = torch.rand(6, 3, 16, 16)
    stage = KorniaAugment(SPEC)
    stage.set_seed(0, 2)
    before = torch.random.get_rng_state()
    y, kwargs = stage(x, marker="kept")
    assert torch.equal(before, torch.random.get_rng_state())
    assert kwargs == {"marker": "kept"}
    sample = stage.get_last_sample_as_dict()
    assert all(len(v) == 6 for v in sample.values())
    assert "1.RandomAffine.angle" in sample and "0.ColorJiggle.batch_prob" in sample
    replay, _ = stage(x, params=sample)
    assert torch.equal(replay, y)
    # p < 1: some samples untouched by the affine, some moved; the mix comes from batch_prob
    applied = sample["1.RandomAffine.batch_prob"]
    assert 0 < applied.sum() <= 6


def test_same_seed_same_draws_different_seed_different():
    x = torch.rand(4, 3, 16, 16)
    a, b, c = KorniaAugment(SPEC), KorniaAugment(SPEC), KorniaAugment(SPEC)
    a.set_seed(1, 3)
    b.set_seed(1, 3)
    c.set_seed(2, 3)
    torch.manual_seed(123)  # global state must not matter
    ya, _ = a(x)
    torch.manual_seed(999)
    yb, _ = b(x)
    yc, _ = c(x)
    assert torch.equal(ya, yb)
    assert not torch.equal(ya, yc)


def test_params_are_yaml_and_rebuild_equal_stage():
    stage = KorniaAugment(SPEC, keys="patch")
    text = yaml.safe_dump(stage.params)
    rebuilt = KorniaAugment(**yaml.safe_load(text))
    assert rebuilt.params == stage.params
    json.dumps(stage.params)
    x = {"patch": torch.rand(2, 3, 8, 8), "other": torch.rand(2, 3, 8, 8)}
    for s in (stage, rebuilt):
        s.set_seed(5, 0)
    ya, _ = stage(x)
    yb, _ = rebuilt(x)
    assert torch.equal(ya["patch"], yb["patch"]) and ya["other"] is x["other"]


def test_large_kornia_params_are_replayed_from_a_seed():
    stage = KorniaAugment({"RandomGaussianNoise": {"std": 0.1, "p": 1.0}, "RandomGaussianBlur": {
        "kernel_size": [3, 3], "sigma": [0.1, 1.0], "p": 1.0}})
    stage.set_seed(0, 0)
    x = torch.rand(3, 3, 16, 16)
    y, _ = stage(x)
    sample = stage.get_last_sample_as_dict()
    assert "0.RandomGaussianNoise.seed" in sample and len(sample) < 10
    assert torch.equal(stage(x, params=sample)[0], y)
    assert not torch.equal(y, x)


def test_control_applies_same_conditions():
    stage = KorniaAugment(SPEC)
    stage.set_seed(0, 0)
    x = torch.rand(4, 3, 16, 16)
    y, _ = stage(x)
    y_control, _ = stage(x, control=True)
    assert torch.equal(y, y_control)


def test_gradient_flows_through_kornia_stage():
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    stage = KorniaAugment({"RandomAffine": {"degrees": 10, "p": 1.0}})
    stage.set_seed(0, 0)
    stage(x)[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"ColourJiggle": {}}, r"'ColourJiggle' is not a 2D image augmentation.*ColorJiggle"),
        ({"AugmentationSequential": {}}, "not a 2D image augmentation"),
        ({"RandomAffine": {"degrees": 10, "bogus": 1}}, r"cannot build kornia.augmentation.RandomAffine"),
        ({"RandomAffine": 5}, "must be a mapping"),
        ({}, "non-empty mapping"),
        ("ColorJiggle", "non-empty mapping"),
    ],
)
def test_bad_kornia_specs_name_stage_and_value(spec, message):
    with pytest.raises(StageError, match=message) as err:
        KorniaAugment(spec)
    assert "KorniaAugment" in str(err.value)


def test_bad_replay_params_are_named():
    stage = KorniaAugment({"RandomAffine": {"degrees": 10}})
    stage.set_seed(0, 0)
    x = torch.rand(2, 3, 8, 8)
    stage(x)
    sample = stage.get_last_sample_as_dict()
    sample["nonsense"] = [1, 2]
    with pytest.raises(StageError, match="nonsense"):
        stage(x, params=sample)


def test_seeded_global_rng_restores_state():
    state = torch.random.get_rng_state()
    with seeded_global_rng(7, torch.device("cpu")):
        a = torch.rand(3)
    with seeded_global_rng(7, torch.device("cpu")):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(state, torch.random.get_rng_state())


def test_viewing_angle_tilt():
    x = torch.rand(8, 3, 24, 24)
    stage = ViewingAngleTilt(max_tilt=50, fov=60, p=0.5)
    stage.set_seed(0, 4)
    y, _ = stage(x)
    sample = stage.get_last_sample_as_dict()
    tilt = torch.as_tensor(sample["tilt"])
    assert (tilt.abs() <= 50).all()
    untouched = tilt == 0
    assert untouched.any() and (~untouched).any()
    assert torch.equal(y[untouched], x[untouched])
    assert not torch.allclose(y[~untouched], x[~untouched])
    assert torch.equal(stage(x, params=sample)[0], y)
    # a strong tilt foreshortens: zero padding appears at the border of a tilted image
    big = {"axis_angle": [0.0], "tilt": [45.0]}
    ones = torch.ones(1, 3, 24, 24)
    tilted, _ = stage(ones, params=big)
    assert tilted.min() == 0 and tilted[0, :, 12, 12].min() > 0.99


@pytest.mark.parametrize(
    "kwargs, message",
    [({"max_tilt": 95}, "max_tilt"), ({"fov": 0}, "fov"), ({"p": 2}, "p=2"), ({"padding_mode": "wrap"}, "padding_mode")],
)
def test_bad_tilt_arguments(kwargs, message):
    with pytest.raises(StageError, match=message):
        ViewingAngleTilt(**kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: KorniaAugment(SPEC),
        lambda: KorniaAugment({"RandomGaussianNoise": {"std": 0.05, "p": 0.5}, "RandomPerspective": {"distortion_scale": 0.3}}),
        lambda: ViewingAngleTilt(max_tilt=40, p=0.7),
    ],
    ids=["color_affine", "noise_perspective", "tilt"],
)
def test_augment_stages_pass_check_stage(make):
    from pandemonium.testing.stages import check_stage

    stage = make()
    stage.set_seed(0, 2)
    check_stage(stage, torch.rand(4, 3, 16, 16))


def test_augment_visualisations_rerender_last_sample():
    from pandemonium.attack.pipeline import Pipeline

    class Writer:
        def __init__(self):
            self.images = {}

        def add_images(self, tag, images, global_step=None):
            self.images[tag] = images

    pipe = Pipeline(KorniaAugment(SPEC), ViewingAngleTilt(max_tilt=30), seed=1)
    x = torch.rand(3, 3, 16, 16)
    writer = Writer()
    result = pipe.evaluate(x, writer=writer, step=2, strict_visualizations=True)
    assert set(writer.images) == {"KorniaAugment/before_after", "ViewingAngleTilt/before_after"}
    grid = writer.images["ViewingAngleTilt/before_after"]
    assert grid.shape == (6, 3, 16, 16)
    assert torch.allclose(grid[3:], result["output"].clamp(0, 1))
