"""Attack presets and bad input: one clear error before any work starts (fast, in-process)."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pandemonium.attack.presets import AttackConfigError, patch_shape_for, select_preset, stage_configs
from pandemonium.modes.attack import AttackScheduler
from pandemonium.modes.evaluate import EvaluateScheduler
from pandemonium.modes.report import ReportScheduler, summary_table
from pandemonium.runs.provenance import artifact_id
from pandemonium.testing.fixtures import write_fake_task

from .conftest import compose

PRESETS = ("classification_targeted", "classification_untargeted", "detection_disappearance", "segmentation")


@pytest.fixture
def roots(pandemonium_roots):
    write_fake_task(pandemonium_roots.data_dir, size=16)
    return pandemonium_roots


def _no_work_done(roots, proj="default"):
    """Nothing but the run folder's bookkeeping exists: no step ran, no artifact was written."""
    proj_dir = roots.out_dir / proj
    artifacts = [p for p in proj_dir.rglob("*") if p.is_file() and "runs" not in p.relative_to(proj_dir).parts]
    steps = list(proj_dir.rglob("steps.jsonl"))
    return not artifacts and not steps


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_and_fits_its_task_type(roots, preset):
    cfg = compose("attack", roots, f"attack={preset}")
    task_type = list(cfg.attack.task_types)[0]
    chosen = select_preset(cfg.attack, "some_task", task_type)
    assert chosen["name"] == preset
    assert chosen["stages"] and chosen["loss"]["_target_"] and chosen["weights"] and chosen["steps"] > 0
    other = "detection" if task_type != "detection" else "classification"
    with pytest.raises(AttackConfigError, match=rf"preset '{preset}' is for {task_type}.*'some_task' is a {other}"):
        select_preset(cfg.attack, "some_task", other)


def test_default_group_picks_the_preset_by_task_type_and_applies_overrides(roots):
    cfg = compose("attack", roots, "attack.steps=7", "attack.lr=0.5", "attack.patch_fraction=0.05")
    cls = select_preset(cfg.attack, "t", "classification")
    det = select_preset(cfg.attack, "t", "detection")
    seg = select_preset(cfg.attack, "t", "semantic_segmentation")
    assert (cls["name"], det["name"], seg["name"]) == ("classification_targeted", "detection_disappearance",
                                                       "segmentation")
    assert cls["steps"] == det["steps"] == 7 and cls["optimizer"]["lr"] == 0.5
    assert cls["patch"]["fraction"] == 0.05
    # the preset's target class is filled into its loss
    assert cls["loss"]["losses"][0]["target_class"] == cls["target_class"] == 0
    with pytest.raises(AttackConfigError, match="no preset for that type"):
        select_preset(cfg.attack, "t", "regression")


def test_patch_shape_from_fraction_and_size():
    preset = {"name": "p", "patch": {"fraction": 0.09}, "stages": [{"_target_": "RectangleImplanter", "scale": [1, 1]}]}
    assert patch_shape_for(preset, (64, 64), 3, "t") == (3, 19, 19)  # 361 / 4096 = 8.8% of the image
    preset["patch"] = {"size": [10, 12]}
    assert patch_shape_for(preset, (64, 64), 1, "t") == (1, 10, 12)
    preset["stages"][0]["scale"] = [1.0, 7.0]
    with pytest.raises(AttackConfigError, match=r"10x12 px \(at implant scale up to 7\) is larger than the 64x64 images of task 't'"):
        patch_shape_for(preset, (64, 64), 1, "t")


def test_stage_configs_fill_the_task_bank(roots):
    cfg = compose("attack", roots)
    struct = type("S", (), {"name": "fake_cls"})()
    stages = stage_configs(select_preset(cfg.attack, "fake_cls", "classification"), struct, "/data")
    assert stages[0]["bank"] == {"task": "fake_cls", "data_dir": "/data", "train_split": "train",
                                 "eval_split": "test", "fold": 0}


def test_artifact_id():
    assert artifact_id("/r/p/PATCHES/shapes_cls/patch_0002.pt") == "shapes_cls/patch_0002"
    assert artifact_id(None) == ""


def test_summary_table_lists_quantities_with_intervals():
    table = summary_table({"a": 0.5, "a_ci_low": 0.4, "a_ci_high": 0.6, "a_n": 10.0, "b": 1.0, "metric": "a"})
    assert table.to_dict("records") == [{"quantity": "a", "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10.0}]


# ---------------------------------------------------------------------------------------- bad input
def test_preset_for_another_task_type_is_refused_before_any_work(roots):
    cfg = compose("attack", roots, "task_list=[fake_cls]", "attack=detection_disappearance")
    with pytest.raises(AttackConfigError, match="'detection_disappearance' is for detection.*'fake_cls' is a classification"):
        AttackScheduler(cfg).run()
    assert _no_work_done(roots)


def test_loss_for_another_task_type_is_refused(roots):
    cfg = compose("attack", roots, "task_list=[fake_cls]",
                  "attack.presets.classification.loss.losses.0._target_=pandemonium.attack.losses.DetectionDisappearance")
    with pytest.raises(AttackConfigError, match="loss DetectionDisappearance is for detection models.*'fake_cls'"):
        AttackScheduler(cfg).run()
    assert _no_work_done(roots)


def test_patch_larger_than_the_images_is_refused(roots):
    cfg = compose("attack", roots, "task_list=[fake_cls]", "attack.presets.classification.patch.size=[20,20]")
    with pytest.raises(AttackConfigError, match="patch of 20x20 px .* larger than the 16x16 images of task 'fake_cls'"):
        AttackScheduler(cfg).run()
    assert _no_work_done(roots)


def test_reuse_of_a_project_without_patches_is_refused(roots):
    (roots.out_dir / "empty_proj" / "MODELS").mkdir(parents=True)
    cfg = compose("attack", roots, "task_list=[fake_cls]", "mode.subroutines=[evaluate]", "reuse.patches=empty_proj")
    with pytest.raises(AttackConfigError, match="reuse.patches=empty_proj: project 'empty_proj' has no patches"):
        AttackScheduler(cfg).run()
    cfg = compose("attack", roots, "task_list=[fake_cls]", "reuse.patches=no_such_proj")
    with pytest.raises(Exception, match="no project 'no_such_proj'"):
        AttackScheduler(cfg).run()
    assert _no_work_done(roots)


def test_missing_model_without_train_subroutine_is_refused(roots):
    cfg = compose("attack", roots, "task_list=[fake_cls]", "mode.subroutines=[attack,evaluate]")
    with pytest.raises(AttackConfigError, match="task 'fake_cls' has no stored model.*enable the `train` subroutine"):
        AttackScheduler(cfg).run()
    assert _no_work_done(roots)


def test_evaluate_and_report_without_patches_are_refused(roots):
    with pytest.raises(AttackConfigError, match="no stored model for task"):
        EvaluateScheduler(compose("evaluate", roots, "task_list=[fake_cls]")).run()
    with pytest.raises(AttackConfigError, match="report: no patches for fake_cls"):
        ReportScheduler(compose("report", roots, "task_list=[fake_cls]")).run()
    assert _no_work_done(roots)


def test_universal_attack_needs_one_patch_shape(roots):
    write_fake_task(roots.data_dir, name="fake_big", size=32)
    cfg = compose("attack", roots, "task_list=[fake_cls,fake_big]", "mode.universal=true")
    with pytest.raises(AttackConfigError, match="universal.*different patch shapes"):
        AttackScheduler(cfg).run()
    cfg = compose("attack", roots, "task_list=[fake_cls,fake_big]", "mode.universal=true",
                  "attack.presets.classification.patch.size=[4,4]", "mode.subroutines=[attack]")
    with pytest.raises(AttackConfigError, match="has no stored model"):  # shapes agree: next check
        AttackScheduler(cfg).run()


def test_evaluate_without_patches_or_with_bad_sweeps_is_refused(roots):
    from pandemonium.models.factory import build_model
    from pandemonium.models.storage import save_model_artifact
    from pandemonium.runs.file_manager import FileManager
    from pandemonium.tasks.creators import load_task_struct

    struct = load_task_struct("fake_cls", roots.data_dir)
    fm = FileManager(roots.out_dir / "default", roots.out_dir / "default" / "runs" / "x")
    save_model_artifact(build_model(struct, {"_target_": "pandemonium.models.factory.task_model", "preset": "tiny"}),
                        struct, {"_target_": "pandemonium.models.factory.task_model", "preset": "tiny"}, fm=fm)
    with pytest.raises(AttackConfigError, match="no stored patch for task.*fake_cls"):
        EvaluateScheduler(compose("evaluate", roots, "task_list=[fake_cls]")).run()
    with pytest.raises(AttackConfigError, match=r"mode.angles must lie in \(-90, 90\) degrees, got \[95.0\]"):
        EvaluateScheduler(compose("evaluate", roots, "task_list=[fake_cls]", "mode.angles=[95]")).run()
    with pytest.raises(AttackConfigError, match="mode.scales must be positive"):
        EvaluateScheduler(compose("evaluate", roots, "task_list=[fake_cls]", "mode.scales=[0,1]")).run()


def test_mode_configs_name_importable_schedulers(roots):
    from hydra.utils import get_class

    for mode in ("attack", "evaluate", "report", "demo"):
        cfg = compose(mode, roots)
        assert get_class(cfg.mode.scheduler._target_).__name__.endswith("Scheduler")
        assert OmegaConf.select(cfg, "mode.subroutines")


def test_robustness_override_touches_only_the_named_stage_param():
    import numpy as np

    from pandemonium.modes.steps.transfer import override_param as _override

    conditions = [{"0_FusedImplantAugment/scale": np.array([1.0, 2.0]), "1_KorniaAugment/scale": np.array([3.0, 3.0]),
                   "0_RectangleImplanter/patch_a.scale": np.array([1.0, 1.0])}]
    out = _override(conditions, 0, "scale", lambda a: a * 2)
    assert out[0]["0_FusedImplantAugment/scale"].tolist() == [2.0, 4.0]
    assert out[0]["0_RectangleImplanter/patch_a.scale"].tolist() == [2.0, 2.0]
    assert out[0]["1_KorniaAugment/scale"].tolist() == [3.0, 3.0]
    assert conditions[0]["0_FusedImplantAugment/scale"].tolist() == [1.0, 2.0]  # recorded conditions untouched
    with pytest.raises(KeyError, match="1_\\*/tilt"):
        _override(conditions, 1, "tilt", lambda a: a)


def test_target_class_outside_the_task_is_refused(roots):
    cfg = compose("attack", roots, "task_list=[fake_cls]", "attack.presets.classification.target_class=5")
    with pytest.raises(AttackConfigError, match=r"target_class 5 does not exist in task 'fake_cls', which has 2 classes \(dark, bright\)"):
        AttackScheduler(cfg).run()
    assert _no_work_done(roots)


def test_demo_config_targets_star_with_a_patch_under_a_tenth_of_the_image(roots):
    cfg = compose("demo", roots)
    preset = select_preset(cfg.attack, "shapes_cls", "classification")
    assert preset["target_class"] == 3 and preset["loss"]["losses"][0]["target_class"] == 3
    c, h, w = patch_shape_for(preset, (64, 64), 3, "shapes_cls")
    assert h * w / (64 * 64) <= 0.1 and preset["steps"] == 100
    assert list(cfg.task_list) == ["shapes_cls", "shapes_det"]


def test_stored_patch_is_judged_by_its_own_target_class(roots):
    from pandemonium.attack.presets import with_patch_target

    cfg = compose("attack", roots)
    preset = select_preset(cfg.attack, "shapes_cls", "classification")
    aimed = with_patch_target(preset, {"presets": {"shapes_cls": {"target_class": 3}}}, "shapes_cls")
    assert aimed["target_class"] == 3 and aimed["loss"]["losses"][0]["target_class"] == 3
    assert preset["target_class"] == 0  # the configured preset is not modified
    assert with_patch_target(preset, {"presets": {"other": {"target_class": 3}}}, "shapes_cls")["target_class"] == 0


@pytest.mark.parametrize("mode", ["attack", "evaluate", "report", "demo", "train"])
def test_mode_schedulers_keep_the_base_api_callable(roots, mode):
    """A step object stored on a mode must not shadow a scheduler method (``plan``, ``run``, ...)."""
    from hydra.utils import get_class

    from pandemonium.runs.base import AbstractBaseScheduler

    cfg = compose(mode, roots, "task_list=[fake_cls]")
    scheduler = get_class(cfg.mode.scheduler._target_)(cfg)
    assert isinstance(scheduler, AbstractBaseScheduler)
    methods = [n for n, v in vars(AbstractBaseScheduler).items() if callable(v) and not n.startswith("__")]
    assert "plan" in methods and "run" in methods
    shadowed = [n for n in methods if not callable(getattr(scheduler, n))]
    assert not shadowed, shadowed
