"""The black-box patch attack (Sparse-RS-style random search) on torch and query-only victims."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pandemonium.attack.blackbox import (
    BlackBoxError,
    FunctionObjective,
    PipelineObjective,
    SparseRSPatch,
    square_fraction,
)

TARGET = 2


class RedDetector(nn.Module):
    """Class 2 wins when some pixel is strongly red; dark scenes are class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.tensor([[0.0, 0, 0], [0, 0, 0], [4.0, -4, -4]]).view(3, 3, 1, 1))
            self.mix.bias.copy_(torch.tensor([2.0, 0.0, 0.0]))

    def forward(self, x):
        return self.mix(x).amax((2, 3))


def scenes(n=16):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.3


def implant(images, patch):
    out = images.clone()
    out[:, :, 2:8, 2:8] = patch
    return out


def targeted_objective(model, images):
    return FunctionObjective(lambda p: F.cross_entropy(model(implant(images, p)), torch.full((len(images),), TARGET),
                                                       reduction="none"))


def success(model, images, patch=None):
    x = images if patch is None else implant(images, patch)
    return float((model(x).argmax(1) == TARGET).float().mean())


def test_black_box_raises_targeted_success_within_budget_and_is_seeded():
    model, images = RedDetector().eval(), scenes()
    objective = targeted_objective(model, images)
    objective.batch_size = len(images)
    result = SparseRSPatch(objective, (3, 6, 6), query_budget=16 * 40, seed=0).run(torch.zeros(3, 6, 6))
    assert result.queries <= 16 * 40 and result.queries == objective.queries
    assert success(model, images) == 0.0 and success(model, images, result.patch) == 1.0
    again = SparseRSPatch(targeted_objective(model, images), (3, 6, 6), query_budget=16 * 40, seed=0)
    again.objective.batch_size = 16
    assert torch.equal(again.run(torch.zeros(3, 6, 6)).patch, result.patch)


def test_black_box_on_an_onnx_victim(tmp_path):
    pytest.importorskip("onnxruntime")
    from pandemonium.models.onnx_model import OnnxModel

    torch.onnx.export(RedDetector().eval(), (scenes(2),), str(tmp_path / "v.onnx"), input_names=["x"],
                      dynamic_axes={"x": {0: "b"}}, dynamo=False)
    victim, images = OnnxModel(tmp_path / "v.onnx"), scenes(8)
    objective = targeted_objective(victim, images)
    objective.batch_size = 8
    result = SparseRSPatch(objective, (3, 6, 6), query_budget=8 * 30, seed=3).run(torch.zeros(3, 6, 6))
    assert victim.queries == result.queries <= 240
    assert success(victim, images, result.patch) > success(victim, images)


def test_pipeline_objective_replays_the_same_scenes():
    class Shifted:
        """A two-stage stand-in honouring the replay contract: random brightness, then the model."""

        def __init__(self):
            self.gen, self.last = torch.Generator().manual_seed(0), None

        def __call__(self, batch, params=None):
            shift = torch.rand(len(batch), generator=self.gen) if params is None else params["shift"]
            self.last = {"shift": shift}
            images = implant(scenes(len(batch)), batch) * (0.5 + shift.view(-1, 1, 1, 1))
            return RedDetector()(images), {"targets": torch.full((len(batch),), TARGET)}

        def get_last_sample_as_dict(self):
            return self.last

    def loss(outputs, targets):
        return {"target": F.cross_entropy(outputs, targets, reduction="none"), "logged": outputs[:, 0]}

    objective = PipelineObjective(Shifted(), loss, {"target": 1.0}, batch_size=4)
    objective.resample()
    patch = torch.rand(3, 6, 6)
    first = objective(patch)
    assert torch.equal(objective(patch), first) and objective.queries == 8
    objective.resample()
    assert not torch.equal(objective(patch), first)
    with pytest.raises(BlackBoxError, match=r"loss terms \['missing'\] not returned"):
        PipelineObjective(Shifted(), loss, {"missing": 1.0}, batch_size=2)(patch)


def test_schedule_and_budget_errors():
    assert square_fraction(0.4, 0, 1000) == 0.4 and square_fraction(0.4, 999, 1000) == pytest.approx(0.4 / 512)
    objective = FunctionObjective(lambda p: p.mean().view(1))
    objective.batch_size = 10
    with pytest.raises(BlackBoxError, match="budget of 15 queries does not cover two batches of 10"):
        SparseRSPatch(objective, (3, 4, 4), query_budget=15).run()


def test_attack_spec_method_and_blackbox_settings_are_checked():
    from pandemonium.attack.blackbox import BlackBoxSettings
    from pandemonium.attack.presets import AttackConfigError
    from pandemonium.attack.spec import AttackSpec

    base = {"name": "p", "task": "t", "task_type": "classification", "patch_shape": [3, 4, 4], "steps": 1,
            "success_metric": "targeted_success", "target_class": 0, "weights": {"targeted": 1.0},
            "stages": [{"_target_": "RectangleImplanter", "bank": None}], "batch_size": 8,
            "loss": {"_target_": "pandemonium.attack.losses.ClassificationTargeted", "target_class": 0}}
    assert AttackSpec.from_dict(base).method == "gradient"
    spec = AttackSpec.from_dict({**base, "method": "blackbox", "blackbox": {"queries": 64}})
    assert AttackSpec.from_dict(spec.to_dict()).blackbox == {"queries": 64}
    assert BlackBoxSettings.from_spec(spec) == BlackBoxSettings(queries=64)
    with pytest.raises(AttackConfigError, match="method 'adam' is not one of gradient, blackbox"):
        AttackSpec.from_dict({**base, "method": "adam"})
    with pytest.raises(AttackConfigError, match=r"blackbox: unknown keys \['budget'\]"):
        AttackSpec.from_dict({**base, "method": "blackbox", "blackbox": {"budget": 10}})
    with pytest.raises(AttackConfigError, match="blackbox.square_init: 2"):
        AttackSpec.from_dict({**base, "method": "blackbox", "blackbox": {"square_init": 2}})
    with pytest.raises(AttackConfigError, match="budget of 10 queries does not cover two batches of 8"):
        AttackSpec.from_dict({**base, "method": "blackbox", "blackbox": {"queries": 10}})


@pytest.mark.parametrize("group", [[], ["attack=blackbox"]])
def test_the_black_box_method_is_an_override_of_any_attack_group(group):
    """``attack.method=blackbox`` and ``attack.blackbox.*`` need no ``+`` on ``attack=default``; a gradient
    attack keeps no black-box settings in its spec."""
    from pandemonium.attack.presets import select_preset
    from pandemonium.attack.spec import AttackSpec
    from pandemonium.cli.main import compose_config

    def spec_of(*overrides: str) -> AttackSpec:
        cfg = compose_config(["mode=attack", *group, *overrides])
        preset = select_preset(cfg.attack, "shapes_cls", "classification")
        return AttackSpec.from_dict({**preset, "task": "shapes_cls", "task_type": "classification",
                                     "patch_shape": [3, 8, 8]})

    spec = spec_of("attack.method=blackbox", "attack.blackbox.queries=300", "attack.batch_size=8")
    assert spec.method == "blackbox" and spec.blackbox["queries"] == 300
    if not group:
        gradient = spec_of()
        assert gradient.method == "gradient" and gradient.blackbox == {}
