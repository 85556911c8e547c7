"""Smoke versions of training and of the train / test / predict modes on tiny tasks (32 px)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pandemonium.models.factory import build_model
from pandemonium.models.lightning_module import build_loss
from pandemonium.models.storage import load_task_model
from pandemonium.models.training import fit, run_model
from pandemonium.tasks.datamodule import TaskDataModule

TINY = {"_target_": "pandemonium.models.factory.task_model", "preset": "tiny"}
FAST_TRAINER = {
    "lightning": {"max_epochs": 3, "enable_progress_bar": False, "accelerator": "cpu"},
    "optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.005},
    "early_stopping": {"enabled": False},
}


def mean_train_loss(model, struct, datamodule) -> float:
    # batch statistics (train mode) rather than running ones: after a handful of steps BatchNorm's
    # running averages still lag, which would hide the progress this smoke test looks for
    loss_fn = build_loss(struct.task_type)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        losses = [loss_fn(model(b["image"]), b)["loss"].item() for b in datamodule.eval_dataloader("train")]
    return sum(losses) / len(losses)


@pytest.mark.parametrize("task", ["shapes_cls", "shapes_det"])
def test_fit_lowers_the_loss_and_reports_metrics(tiny_structs, tmp_path, task):
    struct = tiny_structs[task]
    torch.manual_seed(0)
    model = build_model(struct, TINY)
    datamodule = TaskDataModule(struct, batch_size=8, seed=0)
    before = mean_train_loss(model, struct, datamodule)
    outcome = fit(model, struct, datamodule, FAST_TRAINER, root_dir=tmp_path, seed=0)
    after = mean_train_loss(model, struct, datamodule)
    assert after < before
    monitor = outcome["monitor"]
    assert monitor in outcome["metrics"] and 0.0 <= outcome["metrics"][monitor] <= 1.0
    assert outcome["epochs"] == 3
    assert not torch.are_deterministic_algorithms_enabled()  # the Trainer's global switch was put back


def test_training_is_deterministic_on_cpu(tiny_structs, tmp_path):
    struct = tiny_structs["shapes_cls"]
    weights = []
    for i in range(2):
        torch.manual_seed(123)
        model = build_model(struct, TINY)
        datamodule = TaskDataModule(struct, batch_size=8, seed=0,
                                    cpu_augmentations=[{"_target_": "albumentations.HorizontalFlip", "p": 0.5}])
        trainer = {**FAST_TRAINER, "lightning": {**FAST_TRAINER["lightning"], "max_epochs": 1},
                   "gpu_augmentations": {"flip": {"_target_": "kornia.augmentation.RandomVerticalFlip", "p": 0.5}}}
        fit(model, struct, datamodule, trainer, root_dir=tmp_path / str(i), seed=7)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def compose(overrides):
    from pandemonium.cli.main import compose_config

    return compose_config(overrides)


def run_mode(mode, roots, task, proj, extra=()):
    from pandemonium.runs.base import build_scheduler

    cfg = compose([f"mode={mode}", f"task_list=[{task}]", f"data_dir={roots[0]}", f"out_dir={roots[1]}",
                   f"proj={proj}", "logging=none", "model=tiny", "trainer=fast", *extra])
    scheduler = build_scheduler(cfg)
    return scheduler, scheduler.run()


def test_train_test_predict_modes_share_the_stored_model(tiny_data_dir, tmp_path):
    roots = (tiny_data_dir, tmp_path / "results")
    trained, value = run_mode("train", roots, "shapes_seg", "p1")
    struct = trained.get_struct("shapes_seg")
    model_path = struct.paths["models"]
    assert model_path.exists() and isinstance(value, float)
    model, meta = load_task_model(struct)
    assert meta["task_name"] == "shapes_seg" and "val/iou" in meta["metrics"]

    tester, mean_iou = run_mode("test", roots, "shapes_seg", "p1", ["mode.bootstrap.n=20"])
    report = json.loads(tester.get_struct("shapes_seg").paths["test_metrics"].read_text())
    assert report["model"] == str(model_path)
    assert set(report["metrics"]) == {"iou", "dice", "pixel_accuracy"}
    iou = report["metrics"]["iou"]
    assert iou["low"] <= iou["value"] <= iou["high"] and iou["value"] == pytest.approx(mean_iou)
    assert Path(report["plot"]).stat().st_size > 0
    table = pd.read_csv(tester.get_struct("shapes_seg").paths["test_metrics"].with_suffix(".csv"))
    assert sorted(table["metric"]) == ["dice", "iou", "pixel_accuracy"]

    # another project finds the model through reuse.models=<project>
    reusing, _ = run_mode("test", roots, "shapes_seg", "p_reuse", ["mode.bootstrap.n=5", "reuse.models=p1"])
    reused = json.loads(reusing.get_struct("shapes_seg").paths["test_metrics"].read_text())
    assert reused["model"] == str(model_path)
    assert reused["metrics"]["iou"]["value"] == pytest.approx(iou["value"])

    # the test metric equals a direct evaluation of the stored model
    datamodule = TaskDataModule(struct, batch_size=16)
    outputs = run_model(model, datamodule.eval_dataloader("test"), struct.task_type)
    assert len(outputs["sample_ids"]) == report["n_samples"]

    predictor, written = run_mode("predict", roots, "shapes_seg", "p1", ["mode.splits=[val,test]"])
    assert set(written) == {"val", "test"}
    with open(written["test"], "rb") as fh:
        import numpy as np

        stored = np.load(fh)
        assert stored["masks"].shape == (report["n_samples"], 32, 32)
        assert torch.equal(torch.as_tensor(stored["masks"]).long(), outputs["preds"])


def test_predict_detection_writes_boxes(tiny_data_dir, tmp_path):
    roots = (tiny_data_dir, tmp_path / "results")
    run_mode("train", roots, "shapes_det", "p2", ["trainer.task_type_overrides.detection.lightning.max_epochs=1"])
    _, written = run_mode("predict", roots, "shapes_det", "p2", ["mode.splits=[test]"])
    payload = json.loads(open(written["test"]).read())
    assert payload["class_names"] == ["circle", "square", "triangle", "star", "cross"]
    assert len(payload["predictions"]) == 8
    for record in payload["predictions"]:
        assert len(record["boxes"]) == len(record["scores"]) == len(record["labels"])


def test_test_mode_without_a_model_names_the_task(tiny_data_dir, tmp_path):
    from pandemonium.models.storage import ModelArtifactError

    with pytest.raises(ModelArtifactError, match="'shapes_cls' has no stored model"):
        run_mode("test", (tiny_data_dir, tmp_path / "results"), "shapes_cls", "empty")


@pytest.mark.slow
def test_cli_train_then_test(tiny_data_dir, tmp_path):
    """`pandemonium train` + `pandemonium test` as a user runs them (MLflow + TensorBoard on)."""
    out_dir = tmp_path / "results"
    common = ["task_list=[shapes_cls]", f"data_dir={tiny_data_dir}", f"out_dir={out_dir}", "proj=cli",
              "model=tiny", "trainer=fast", "mode.bootstrap.n=20"]
    for mode in ("train", "test"):
        # MLflow + TensorBoard stay on for train; test skips them to keep this slow test shorter
        args = [mode, *common, "logging=none"] if mode == "test" else [mode, *common[:-1]]
        proc = subprocess.run([str(Path(sys.executable).parent / "pandemonium"), *args], capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out_dir / "mlflow.db").is_file()
    assert list((out_dir / "cli" / "MODELS" / "shapes_cls").glob("models_*.pt"))
    assert list((out_dir / "cli").rglob("events.out.tfevents.*"))
    report = json.loads(next((out_dir / "cli" / "TEST_METRICS" / "shapes_cls").glob("*.json")).read_text())
    assert 0.0 <= report["metrics"]["accuracy"]["value"] <= 1.0


@pytest.mark.slow
def test_cli_bad_model_is_one_line_naming_the_task(tiny_data_dir, tmp_path):
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "pandemonium"), "train", "task_list=[shapes_cls]",
         f"data_dir={tiny_data_dir}", f"out_dir={tmp_path}", "logging=none", "model._target_=no.such.Net"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert any("'shapes_cls'" in line and "no.such.Net" in line for line in error_lines), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_torchscript_model_imported_with_zero_epochs_then_tested(tiny_data_dir, tiny_structs, tmp_path):
    """A pretrained TorchScript detector enters a project through `train` with 0 epochs."""
    struct = tiny_structs["shapes_det"]
    traced = torch.jit.trace(build_model(struct, TINY).eval(), torch.rand(1, 3, 32, 32), strict=False)
    script_file = tmp_path / "detector.pt"
    traced.save(str(script_file))
    roots = (tiny_data_dir, tmp_path / "results")
    extra = [f"model.torchscript={script_file}"]
    trained, _ = run_mode("train", roots, "shapes_det", "ts",
                          [*extra, "trainer.task_type_overrides.detection.lightning.max_epochs=0"])
    model, meta = load_task_model(trained.get_struct("shapes_det"))
    assert isinstance(model, torch.jit.ScriptModule) and meta["model_config"]["torchscript"]
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x)["objectness"], traced(x)["objectness"])
    tester, _ = run_mode("test", roots, "shapes_det", "ts", ["mode.bootstrap.n=5"])
    report = json.loads(tester.get_struct("shapes_det").paths["test_metrics"].read_text())
    assert set(report["metrics"]) == {"map50", "map"}
