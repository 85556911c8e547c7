import json

import pytest
import torch

from pandemonium.attack.stages.base import StageError
from pandemonium.attack.stages.implant import (
    FixedRatioImplanter,
    PerspectiveImplanter,
    RectangleImplanter,
    ScaleToBoxImplanter,
)


def _stages(bank):
    return [
        RectangleImplanter(bank, scale=[0.5, 2.0], match_brightness=True),
        FixedRatioImplanter(bank, ratio=[0.2, 0.5], mask="circle"),
        ScaleToBoxImplanter(bank, scale=[0.3, 1.0]),
        PerspectiveImplanter(bank),
    ]


def test_implanters_replay_control_and_targets(scene_bank):
    patch = torch.ones(4, 3, 8, 8)
    for stage in _stages(scene_bank):
        stage.set_seed(0, 1)
        y, kwargs = stage(patch, foo=1)
        assert y.shape == (4, 3, 32, 32)
        assert kwargs["foo"] == 1
        targets = kwargs["targets"]
        scenes = stage.bank.images[targets["image_index"]]
        changed = (y - scenes).abs().amax(dim=1) > 1e-3
        assert changed.flatten(1).any(1).all(), stage.name  # every sample got a patch
        assert targets["class"].tolist() == targets["image_index"].tolist()
        assert len(targets["boxes"]) == 4 and targets["labels"][0].tolist() == [1, 2]
        assert targets["patch_boxes"].shape == (4, 4)
        assert kwargs["patch"] is patch
        replay, _ = stage(patch, params=stage.get_last_sample_as_dict())
        assert torch.equal(replay, y)
        control, ckw = stage(patch, control=True)
        assert torch.equal(control, scenes)
        assert torch.equal(ckw["targets"]["image_index"], targets["image_index"])
        # pixels outside the patch box are untouched (bilinear edges bleed half a patch pixel)
        box = targets["patch_boxes"][0]
        bleed = 0.5 * float(box[2] - box[0]) / patch.shape[-1]
        x1 = int(torch.ceil(box[2] + bleed).clamp(max=32))
        if x1 < 32:
            assert torch.equal(y[0, :, :, x1:], scenes[0, :, :, x1:])
        json.dumps(stage.params)
        rebuilt = type(stage)(**stage.params)
        rebuilt.set_seed(0, 1)
        assert torch.equal(rebuilt(patch)[0], y)


def test_rectangle_integer_placement_is_exact(scene_bank):
    stage = RectangleImplanter(scene_bank, scale=1.0)
    stage.set_seed(3, 0)
    patch = torch.rand(2, 3, 8, 8)
    params = stage.sample_params(patch.shape, patch.device)
    given = {k: v.numpy() for k, v in params.items()}
    given["offset_x"][:] = 4.0 / 24.0  # x0 = offset * (32 - 8) = 4
    given["offset_y"][:] = 12.0 / 24.0  # y0 = 12
    y, kwargs = stage(patch, params=given)
    assert torch.allclose(y[:, :, 12:20, 4:12], patch, atol=1e-6)
    assert kwargs["targets"]["patch_boxes"][0].tolist() == pytest.approx([4.0, 12.0, 12.0, 20.0])


def test_evaluate_draws_eval_split_only(scene_bank):
    stage = RectangleImplanter(scene_bank)
    stage.set_seed(0, 0)
    _, kwargs = stage(torch.rand(32, 3, 8, 8), evaluate=True)
    assert set(kwargs["targets"]["image_index"].tolist()) <= {6, 7}
    _, kwargs = stage(torch.rand(32, 3, 8, 8))
    assert set(kwargs["targets"]["image_index"].tolist()) <= set(range(6))


def test_scale_to_box_stays_inside_the_chosen_box(scene_bank):
    stage = ScaleToBoxImplanter(scene_bank, scale=[0.5, 1.0])
    stage.set_seed(1, 0)
    _, kwargs = stage(torch.rand(16, 3, 8, 4))
    pb = kwargs["targets"]["patch_boxes"]
    boxes = torch.tensor([[2.0, 2.0, 20.0, 24.0], [16.0, 16.0, 30.0, 30.0]])
    inside = [
        ((pb[:, None, :2] >= boxes[None, :, :2] - 1e-4) & (pb[:, None, 2:] <= boxes[None, :, 2:] + 1e-4)).all(-1).any(-1)
    ]
    assert inside[0].all()
    assert torch.allclose((pb[:, 2] - pb[:, 0]) * 2, pb[:, 3] - pb[:, 1], atol=1e-4)  # aspect 4:8 kept


def test_perspective_implant_lands_on_the_quad(scene_bank):
    stage = PerspectiveImplanter(scene_bank)
    stage.set_seed(0, 0)
    y, kwargs = stage(torch.ones(2, 3, 8, 8))
    cov = kwargs["targets"]["patch_mask"]
    assert cov[:, 0, 15, 15].min() > 0.99  # centre of the quad
    assert cov[:, 0, 1, 1].max() == 0  # outside it
    assert kwargs["targets"]["patch_boxes"][0].tolist() == pytest.approx([4.0, 4.0, 28.0, 26.0])


def test_dict_of_patches_each_placed(scene_bank):
    stage = RectangleImplanter(scene_bank, keys=["a", "b"])
    stage.set_seed(0, 0)
    x = {"a": torch.ones(3, 3, 4, 4), "b": torch.ones(3, 3, 6, 6), "c": torch.zeros(3, 3, 4, 4)}
    y, kwargs = stage(x)
    assert set(kwargs["targets"]["patch_boxes"]) == {"a", "b"}
    params = stage.get_last_sample_as_dict()
    assert {"image_index", "a.scale", "b.offset_y"} <= set(params)
    assert torch.equal(stage(x, params=params)[0], y)


def test_brightness_matching_scales_patch_to_scene(tmp_path):
    path = tmp_path / "dark.pt"
    torch.save({"images": torch.full((2, 3, 16, 16), 0.25)}, path)
    matched = RectangleImplanter(str(path), match_brightness=True, brightness_range=[0.1, 2.0])
    plain = RectangleImplanter(str(path))
    for s in (matched, plain):
        s.set_seed(0, 0)
    patch = torch.full((2, 3, 4, 4), 0.8)
    ym, km = matched(patch)
    yp, _ = plain(patch)
    assert yp.max().item() == pytest.approx(0.8, abs=1e-5)
    assert ym.max().item() == pytest.approx(0.8 * 0.25 / 0.5, abs=1e-4)


def test_gradient_reaches_patch(scene_bank):
    patch = torch.rand(2, 3, 8, 8, requires_grad=True)
    stage = FixedRatioImplanter(scene_bank, ratio=0.5)
    stage.set_seed(0, 0)
    y, _ = stage(patch)
    y.sum().backward()
    assert patch.grad is not None and patch.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "make, patch, message",
    [
        (lambda b: RectangleImplanter(b, scale=2.0), torch.rand(1, 3, 20, 20), "larger than the 32x32"),
        (lambda b: RectangleImplanter(b, mask=[[1.0] * 3] * 3), torch.rand(1, 3, 8, 8), "mask has shape"),
        (lambda b: RectangleImplanter(b), torch.rand(1, 1, 8, 8), "1 channels"),
        (lambda b: RectangleImplanter(b, keys=["a"]), {"b": torch.rand(1, 3, 8, 8)}, "keys"),
        (lambda b: RectangleImplanter(b), {"a": torch.rand(1, 3, 8, 8), "b": torch.rand(2, 3, 8, 8)}, "batch sizes"),
    ],
)
def test_bad_input_names_stage_and_value(scene_bank, make, patch, message):
    stage = make(scene_bank)
    stage.set_seed(0, 0)
    with pytest.raises(StageError, match=message) as err:
        stage(patch)
    assert stage.name in str(err.value)


def test_bad_construction(scene_bank, tmp_path):
    with pytest.raises(StageError, match="larger than its target box"):
        ScaleToBoxImplanter(scene_bank, scale=[0.5, 1.5])
    with pytest.raises(StageError, match=r"ratio=.*\[1e-06, 1.0\]"):
        FixedRatioImplanter(scene_bank, ratio=1.5)
    torch.save({"images": torch.rand(2, 3, 16, 16)}, tmp_path / "nobox.pt")
    with pytest.raises(StageError, match="no 'quads'"):
        PerspectiveImplanter(str(tmp_path / "nobox.pt"))
    with pytest.raises(StageError, match="RectangleImplanter.*must name exactly one"):
        RectangleImplanter({"pt": "a.pt", "folder": "x"})
    torch.save({"images": torch.rand(1, 3, 16, 16), "boxes": [torch.tensor([[0.0, 0.0, 17.0, 4.0]])]}, tmp_path / "o.pt")
    with pytest.raises(StageError, match=r"ScaleToBoxImplanter.*outside the 16x16 image: \[0.0, 0.0, 17.0, 4.0\]"):
        ScaleToBoxImplanter(str(tmp_path / "o.pt"))


def test_validate_reports_misfit(scene_bank, caplog):
    stage = RectangleImplanter(scene_bank, scale=4.0)
    assert stage.validate(torch.rand(1, 3, 8, 8)) is True
    assert stage.validate(torch.rand(1, 3, 12, 12)) is False
    assert "larger than" in caplog.text


@pytest.mark.parametrize("index", range(4), ids=["rectangle", "fixed_ratio", "scale_to_box", "perspective"])
@pytest.mark.parametrize("dict_input", [False, True], ids=["tensor", "dict"])
def test_implanters_pass_check_stage(scene_bank, index, dict_input):
    from pandemonium.testing.stages import check_stage

    stage = _stages(scene_bank)[index]
    stage.set_seed(0, 1)
    x = {"a": torch.rand(4, 3, 8, 8), "b": torch.rand(4, 3, 6, 6)} if dict_input else torch.rand(4, 3, 8, 8)
    check_stage(stage, x)


def test_implanter_in_a_pipeline_round_trips_through_yaml(scene_bank):
    from pandemonium.attack.pipeline import Pipeline
    from pandemonium.attack.stages.augment import KorniaAugment

    pipe = Pipeline(
        RectangleImplanter(scene_bank, scale=[0.5, 1.5]), KorniaAugment({"RandomAffine": {"degrees": 10}}), seed=3
    )
    patch = torch.rand(4, 3, 8, 8)
    y, kwargs = pipe(patch)
    assert torch.equal(pipe(patch, params=pipe.get_last_sample_as_dict())[0], y)
    rebuilt = Pipeline.from_yaml(pipe.to_yaml())
    assert torch.equal(rebuilt(patch)[0], y)
    assert kwargs["targets"]["patch_boxes"].shape == (4, 4)


@pytest.mark.parametrize("index", range(4), ids=["rectangle", "fixed_ratio", "scale_to_box", "perspective"])
def test_windowed_compositing_equals_whole_image(scene_bank, index):
    stage = _stages(scene_bank)[index]
    stage.set_seed(2, 0)
    patch = {"a": torch.rand(8, 3, 8, 8), "b": torch.rand(8, 3, 4, 6)}
    fast, kw = stage(patch)
    sample = stage.get_last_sample_as_dict()
    stage.use_windows = False
    reference, kw_ref = stage(patch, params=sample)
    assert torch.allclose(fast, reference, atol=1e-6)
    assert torch.allclose(kw["targets"]["patch_mask"], kw_ref["targets"]["patch_mask"], atol=1e-6)


def test_visualisations_and_description(scene_bank):
    class Writer:
        def __init__(self):
            self.calls = []

        def add_images(self, tag, images, global_step=None):
            self.calls.append((tag, tuple(images.shape), global_step))

    from pandemonium.attack.pipeline import Pipeline

    stage = RectangleImplanter(scene_bank)
    writer = Writer()
    stage.log_vizualizations(torch.rand(3, 3, 8, 8), None, writer, 0)  # nothing drawn yet: nothing logged
    assert writer.calls == []
    pipe = Pipeline(stage, seed=0)
    result = pipe.evaluate(torch.rand(3, 3, 8, 8), writer=writer, step=7, strict_visualizations=True)
    assert writer.calls == [("RectangleImplanter/implanted_vs_control", (6, 3, 32, 32), 7)]
    assert torch.equal(result["control_output"], stage.bank.images[result["kwargs"]["targets"]["image_index"]])
    assert "scenes.pt" in stage.get_description() and "6 train / 2 eval" in stage.get_description()
    from pandemonium.attack.stages.fused import FusedImplantAugment

    assert "degrees" in FusedImplantAugment(scene_bank, degrees=5).get_description()


def test_public_names_reachable_from_package():
    import pandemonium.attack as pipeline

    assert pipeline.RectangleImplanter is RectangleImplanter
    assert pipeline.ImageBank.__name__ == "ImageBank"


def test_uint8_bank_implanter_passes_check_stage(scene_bank):
    from pandemonium.testing.stages import check_stage

    stage = RectangleImplanter({"pt": scene_bank, "storage": "uint8"}, scale=[0.5, 1.5])
    stage.set_seed(0, 1)
    check_stage(stage, torch.rand(4, 3, 8, 8))


def test_eval_split_without_boxes_is_named(tmp_path):
    torch.save(
        {
            "images": torch.rand(2, 3, 16, 16),
            "boxes": [torch.tensor([[1.0, 1.0, 8.0, 8.0]]), torch.zeros(0, 4)],
            "split": ["train", "eval"],
        },
        tmp_path / "b.pt",
    )
    stage = ScaleToBoxImplanter(str(tmp_path / "b.pt"))
    stage.set_seed(0, 0)
    stage(torch.rand(2, 3, 4, 4))
    with pytest.raises(StageError, match="ScaleToBoxImplanter.*no image in the eval split has any boxes"):
        stage(torch.rand(2, 3, 4, 4), evaluate=True)
