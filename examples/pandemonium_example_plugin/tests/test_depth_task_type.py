"""The plugin's ``depth_estimation`` task type, from ``pandemonium`` commands, with no edit to pandemonium.

The fast tests check the pieces (spec, modality geometry, creator, stage contract, loss and success
metric); the slow one runs create -> train -> test -> predict -> attack -> evaluate -> report in
process, on 48 scenes of 32 px with a tiny model and a few patch steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pandemonium.plugins import load_plugins

TASK = "example_depth"


@pytest.fixture
def plugin():
    """The installed plugins, activated for one test and undone afterwards."""
    registry = load_plugins(reload=True, activate=True)
    assert "example" in registry.loaded, registry.failed
    yield registry
    registry.deactivate()
    load_plugins(reload=True)


def test_the_task_type_is_one_spec_from_the_plugin(plugin):
    from pandemonium.tasks import KORNIA_VALID_MODALITIES, Modality, TaskType
    from pandemonium.tasks.attributes import Geometry, modality_geometry
    from pandemonium.tasktypes import task_type_spec

    spec = task_type_spec("depth_estimation")
    assert TaskType("depth_estimation").target is Modality("depth")
    assert modality_geometry("depth") is Geometry.DENSE and Modality("depth") in KORNIA_VALID_MODALITIES
    assert spec.headline_metric() == "depth_pushed" and spec.attack_preset == "depth_push"


def test_creator_model_loss_and_success(plugin, pandemonium_roots):
    from pandemonium_example_plugin.depth import DepthPushAway, depth_success

    from pandemonium.attack.stages.registry import STAGE_REGISTRY
    from pandemonium.models.factory import build_model
    from pandemonium.models.lightning_module import build_loss, build_metrics
    from pandemonium.tasks import TaskDataModule, create_task, load_task_struct
    from pandemonium.testing import check_stage

    create_task(TASK, pandemonium_roots.data_dir, num_samples=12, image_size=16)
    struct = load_task_struct(TASK, pandemonium_roots.data_dir)
    assert "depth" in {m.value for m in struct.modalities}
    batch = next(iter(TaskDataModule(struct, batch_size=4, cpu_augmentations={"cpu": [
        {"_target_": "albumentations.HorizontalFlip", "p": 1.0}]}).train_dataloader()))
    assert batch["depth"].shape == (4, 16, 16) and batch["depth"].dtype == torch.float32
    # near (dark-depth) pixels are the bright ones, flipped or not
    near = batch["depth"] < 0.45
    assert (batch["image"].mean(1)[near].mean() > batch["image"].mean(1)[~near].mean())
    model = build_model(struct, {"_target_": "pandemonium.models.factory.task_model", "preset": "tiny"})
    out = model(batch["image"])
    assert out.shape == (4, 16, 16) and float(build_loss(struct.task_type)(out, batch)["loss"].detach()) > 0
    assert set(build_metrics(struct.task_type, 0)) == {"mae", "mse"}
    assert DepthPushAway()(out)["nearness"].shape == (4,)
    counts = depth_success(out + 0.2, out, {})
    assert torch.equal(counts["depth_pushed_hits"], counts["depth_pushed_trials"])
    stage = STAGE_REGISTRY["ExampleDesaturate"](max_amount=0.4)
    stage.set_seed(0, 0)
    check_stage(stage, torch.rand(4, 3, 16, 16))


@pytest.mark.slow
def test_create_train_test_predict_attack_evaluate_report(plugin, pandemonium_roots):
    from pandemonium.cli.main import compose_config
    from pandemonium.runs.base import build_scheduler

    def run(*overrides: str):
        cfg = compose_config([*overrides, f"task_list=[{TASK}]", "logging=none"])
        scheduler = build_scheduler(cfg)
        return scheduler, scheduler.run()

    _, created = run("mode=create", "+mode.creator_kwargs.num_samples=48", "+mode.creator_kwargs.image_size=32")
    assert created[TASK]["status"] == "created"
    _, monitored = run("mode=train", "model=tiny", "trainer.lightning.max_epochs=2",
                       "trainer.lightning.max_time=00:00:01:00")
    assert 0 <= monitored < 0.5  # validation MAE of depth in [0, 1]
    sched, mae = run("mode=test", "mode.bootstrap.n=20")
    report = json.loads(Path(sched.get_struct(TASK).paths["test_metrics"]).read_text())
    assert report["task_type"] == "depth_estimation" and report["monitor"] == "mae"
    assert report["metrics"]["mae"]["value"] == pytest.approx(mae)
    _, written = run("mode=predict")
    predicted = np.load(written["test"])
    assert predicted["depth"].shape[1:] == (32, 32) and len(predicted["sample_ids"]) == predicted["depth"].shape[0]
    sched, _ = run("mode=attack", "mode.subroutines=[attack]", "attack.steps=4", "attack.num_eval=16",
                   "attack.batch_size=8")
    paths = sched.get_struct(TASK).paths
    patch = torch.load(paths["patches"], weights_only=False)
    assert patch["patch"].shape == (3, 9, 9) and patch["tasks"] == [TASK]
    sched, _ = run("mode=evaluate", "mode.num_eval=16", "mode.batch_size=16", "mode.scales=[0.75,1.0]",
                   "mode.angles=[0,30]")
    assert Path(sched.get_struct(TASK).paths["transfer"]).is_file()
    sched, _ = run("mode=report", "mode.num_examples=2")
    html = Path(sched.get_struct(TASK).paths["reports"]).read_text()
    assert TASK in html and "depth_pushed" in html
