"""AttackSpec: one validated spec per task, built from the ``attack`` config group."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pandemonium.attack.presets import DEFAULTS, AttackConfigError
from pandemonium.attack.spec import AttackSpec, AttackSpecs, EvaluationPlan
from pandemonium.build import BuildError

PRESET_DIR = Path(__file__).resolve().parents[2] / "src" / "pandemonium" / "configs" / "attack"
SRC = Path(__file__).resolve().parents[2] / "src" / "pandemonium"


@dataclass
class FakeStruct:
    """What the spec reads from a TaskStruct."""

    name: str = "t"
    task_type: str = "classification"
    image_size: tuple[int, int] = (64, 64)
    channels: int = 3
    num_classes: int = 5
    class_names: list[str] = field(default_factory=lambda: ["a", "b", "c", "d", "e"])


def preset(name: str, **changes) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(PRESET_DIR / f"{name}.yaml"))
    cfg.update(changes)
    return cfg


def group(**overrides) -> dict:
    """The default group: presets by task type plus the (null) overrides."""
    base = {"presets": {"classification": preset("classification_targeted"),
                        "detection": preset("detection_disappearance"),
                        "semantic_segmentation": preset("segmentation")},
            "steps": None, "batch_size": None, "lr": None, "patch_fraction": None, "num_eval": None}
    return {**base, **overrides}


@pytest.mark.parametrize("task_type", ["classification", "detection", "semantic_segmentation"])
def test_spec_from_the_default_group_is_typed_and_round_trips(task_type):
    spec = AttackSpec.from_config(group(steps=7, lr=0.5), FakeStruct(task_type=task_type))
    assert spec.task == "t" and spec.task_type == task_type and spec.steps == 7
    assert spec.optimizer["lr"] == 0.5 and spec.named("optimizer") == ("adam", {"lr": 0.5})
    assert spec.patch_shape[0] == 3 and all(isinstance(w, float) for w in spec.weights.values())
    data = spec.to_dict()
    assert json.loads(json.dumps(data)) == data  # plain data
    again = AttackSpec.from_dict(data)
    assert again == spec and again.to_dict() == data
    assert data["task_types"] == [task_type]  # keys the spec does not model travel along


def test_overrides_and_target_class_fill_the_loss():
    spec = AttackSpec.from_config(group(patch_fraction=0.04, num_eval=10), FakeStruct())
    assert spec.patch_shape == (3, 12, 12)  # floor(sqrt(0.04 * 64 * 64))
    assert spec.evaluation.num_eval == 10
    assert spec.target_class == 0 and spec.loss["losses"][0]["target_class"] == 0
    assert spec.success_metric == "targeted_success"


def test_one_default_per_setting():
    bare = preset("classification_untargeted")
    for key in ("batch_size", "num_eval", "eval_batch_size", "eval_every", "optimizer", "schedule"):
        bare.pop(key)
    bare["patch"].pop("parameterisation")
    spec = AttackSpec.from_config(bare, FakeStruct())
    mode = EvaluationPlan.from_mode({})
    assert spec.evaluation == EvaluationPlan() and (mode.num_eval, mode.batch_size) == (
        spec.evaluation.num_eval, spec.evaluation.batch_size) == (DEFAULTS["num_eval"], DEFAULTS["eval_batch_size"])
    assert spec.batch_size == DEFAULTS["batch_size"] and spec.eval_every == DEFAULTS["eval_every"]
    assert spec.optimizer == DEFAULTS["optimizer"] and spec.schedule == DEFAULTS["schedule"]
    assert spec.patch["parameterisation"] == DEFAULTS["parameterisation"]


def test_no_mode_or_step_keeps_its_own_evaluation_default():
    """Evaluation settings have one default (in spec.py), not a literal per call site."""
    literal = re.compile(r"""get\(\s*["'](num_eval|eval_batch_size|batch_size)["']\s*,\s*\d""")
    offenders = [f"{p.relative_to(SRC)}: {m.group(0)}" for p in (SRC / "modes").rglob("*.py")
                 for m in literal.finditer(p.read_text())]
    assert not offenders, offenders


@pytest.mark.parametrize(("change", "struct", "message"), [
    ({}, FakeStruct(task_type="detection"),
     r"preset 'classification_targeted' is for classification tasks, but task 't' is a detection task"),
    ({"target_class": 7}, FakeStruct(),
     r"target_class 7 does not exist in task 't', which has 5 classes \(a, b, c, d, e\)"),
    ({"patch": {"size": [70, 10]}}, FakeStruct(), r"patch of 70x10 px .* larger than the 64x64 images of task 't'"),
    ({"steps": -3}, FakeStruct(), r"preset 'classification_targeted' \(task 't'\): steps must be a positive integer, got -3"),
    ({"batch_size": "many"}, FakeStruct(), r"\(task 't'\): batch_size must be a positive integer, got 'many'"),
    ({"weights": {"targeted": "lots"}}, FakeStruct(), r"\(task 't'\): weights must be numbers"),
    ({"stages": [{"_target_": "NoSuchStage"}]}, FakeStruct(), r"\(task 't'\): stage 0: unknown stage 'NoSuchStage'"),
    ({"loss": {"_target_": "pandemonium.attack.losses.DetectionDisappearance"}}, FakeStruct(),
     r"loss DetectionDisappearance is for detection models, but task 't' is a classification task"),
])
def test_validation_errors_name_the_culprit(change, struct, message):
    with pytest.raises(AttackConfigError, match=message):
        AttackSpec.from_config(preset("classification_targeted", **change), struct)


def test_unbuildable_parts_are_refused_before_any_work():
    bad_loss = preset("classification_untargeted", loss={"_target_": "pandemonium.attack.losses.NoSuchLoss"})
    with pytest.raises(BuildError, match=r"attack preset 'classification_untargeted' \(task 't'\): loss: cannot import"):
        AttackSpec.from_config(bad_loss, FakeStruct())
    bad_patch = preset("classification_untargeted")
    bad_patch["patch"]["parameterisation"] = {"_target_": "no.such.Patch"}
    with pytest.raises(BuildError, match=r"\(task 't'\): patch parameterisation: cannot import _target_ 'no.such.Patch'"):
        AttackSpec.from_config(bad_patch, FakeStruct())
    with pytest.raises(AttackConfigError, match=r"mode.angles must lie in \(-90, 90\) degrees, got \[95.0\]"):
        EvaluationPlan.from_mode({"angles": [95]})


def test_with_target_and_for_patch_aim_without_changing_the_original():
    spec = AttackSpec.from_config(group(), FakeStruct(name="shapes_cls"))
    aimed = spec.for_patch({"presets": {"shapes_cls": spec.with_target(3).to_dict()}})
    assert aimed.target_class == 3 and aimed.loss["losses"][0]["target_class"] == 3
    assert spec.target_class == 0 and spec.loss["losses"][0]["target_class"] == 0
    assert spec.for_patch({"presets": {"other": {"target_class": 3}}}) is spec
    untargeted = AttackSpec.from_config(preset("classification_untargeted"), FakeStruct(name="shapes_cls"))
    assert untargeted.for_patch({"presets": {"shapes_cls": {"target_class": 3}}}).target_class is None


def test_implanter_is_found_by_role_not_position():
    stages = [{"_target_": "KorniaAugment", "augmentations": {"ColorJiggle": {"brightness": 0.1}}},
              {"_target_": "FusedImplantAugment", "bank": None, "scale": [1.0, 1.0]}]
    spec = AttackSpec.from_config(preset("classification_untargeted", stages=stages), FakeStruct())
    assert spec.implanter_index() == 1
    no_implanter = AttackSpec.from_config(preset("classification_untargeted", stages=stages[:1]), FakeStruct())
    with pytest.raises(AttackConfigError, match=r"\(task 't'\): stages no stage puts the patch into the images \(role 'implant'\)"):
        no_implanter.implanter_index()


def test_spec_builds_pipeline_loss_and_patch(fake_task, pandemonium_roots):
    struct = fake_task
    spec = AttackSpecs(group(patch_fraction=0.1))(struct)
    assert AttackSpecs(group())(struct) is not spec and spec.patch_shape == (3, 2, 2)  # 8x8 fake images
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    tilt = {"_target_": "ViewingAngleTilt", "max_tilt": 30.0, "p": 1.0}
    pipeline = spec.build_pipeline(model, struct, str(pandemonium_roots.data_dir), seed=0, after_implanter=[tilt])
    assert [p.split("_", 1)[1] for p in pipeline.prefixes] == ["FusedImplantAugment", "ViewingAngleTilt", "ModelStage"]
    assert pipeline.stages_with_role("implant") == [spec.implanter_index()]  # the pipeline agrees
    patch = spec.build_patch(seed=0)
    x = patch()[None].expand(4, -1, -1, -1)
    y, kwargs = pipeline(x, evaluate=True)
    assert y.shape == (4, 2)
    terms = spec.build_loss()(y, **kwargs)
    assert set(spec.weights) <= set(terms)


def test_success_metric_defaults_to_the_task_type_headline():
    from pandemonium.tasktypes import task_type_spec

    classification = task_type_spec("classification")
    targeted = preset("classification_targeted")
    targeted.pop("success_metric")
    assert AttackSpec.from_config(targeted, FakeStruct()).success_metric == classification.headline_metric(0)
    untargeted = preset("classification_untargeted")
    untargeted.pop("success_metric")
    assert AttackSpec.from_config(untargeted, FakeStruct()).success_metric == classification.headline_metric(None)
    assert classification.headline_metric(0) != classification.headline_metric(None)
    seg = preset("segmentation", task_types=None)
    seg.pop("success_metric")
    assert (AttackSpec.from_config(seg, FakeStruct(task_type="semantic_segmentation")).success_metric
            == task_type_spec("semantic_segmentation").headline_metric(None))
    seg["loss"] = {"_target_": "pandemonium.attack.losses.TotalVariation"}
    with pytest.raises(AttackConfigError, match="no success metric known for no_such_type tasks"):
        AttackSpec.from_config(seg, FakeStruct(task_type="no_such_type"))
