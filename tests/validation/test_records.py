"""Records stay true: an interrupted step resumes its own MLflow run, training logs pair metrics of the
same epoch, a killed attempt's checkpoints do not stay beside the new ones, and meaningless runs warn
(log, summary and the run folder's warnings.json that the report reads)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from pandemonium.runs import warnings as run_warnings

sys.path.insert(0, str(Path(__file__).parent.parent / "attack"))  # the trainer tests' toy pipeline
from trainer.toys import PATCH, ToyLoss, toy_pipeline  # noqa: E402


@pytest.fixture
def sqlite_uri(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _tracking(tmp_path, uri):
    from pandemonium.tracking.mode_run import ModeTracking

    return ModeTracking(True, uri, "records", tmp_path, "attack r1", {}, artifact_root=tmp_path / "mlartifacts")


def _trainer(tmp_path, uri):
    from pandemonium.attack.training import EvaluationSettings, PatchTrainer, default_callbacks

    return PatchTrainer(
        toy_pipeline(seed=3), ToyLoss(), {"target": 1.0}, patch=(3, PATCH, PATCH), batch_size=8,
        evaluation=EvaluationSettings(num_eval=16, batch_size=8, every=2, target_class=0),
        optimizer={"_target_": "adam", "lr": 0.2}, seed=1, out_dir=tmp_path / "fit", run_name="attack/toy",
        callbacks=default_callbacks(mlflow=uri, tensorboard=False, progress=False, files=False),
    )


def test_continue_closes_the_killed_attempt_and_the_step_resumes_its_own_run(tmp_path, sqlite_uri):
    from pandemonium.modes.steps.context import resume_mlflow_run

    first = _tracking(tmp_path, sqlite_uri)
    with mlflow.start_run(run_name="attack/toy", nested=True) as killed:  # what a kill -9 leaves: RUNNING
        mlflow.log_metric("train/target", 5.0, step=0)
    mlflow.MlflowClient().set_terminated(killed.info.run_id, status="RUNNING")
    mlflow.end_run()  # the process is gone: nothing closes the parent either
    assert first.run_id
    resumed = _tracking(tmp_path, sqlite_uri)  # `continue`: same parent, killed children closed
    assert resumed.resumed and resumed.run_id == first.run_id
    client = mlflow.MlflowClient()
    assert client.get_run(killed.info.run_id).info.status == "KILLED"

    trainer = _trainer(tmp_path, sqlite_uri)
    assert resume_mlflow_run(trainer, resumed, "attack/toy") == killed.info.run_id
    result = trainer.fit(4)
    resumed.finish()
    assert result.run_id == killed.info.run_id
    runs = client.search_runs([client.get_run(first.run_id).info.experiment_id],
                              filter_string="attributes.run_name = 'attack/toy'")
    assert [r.info.status for r in runs] == ["FINISHED"]  # one run for the step, finished
    history = client.get_metric_history(killed.info.run_id, "train/target")
    assert {m.step for m in history} == {0, 1, 2, 3, 4}  # the killed attempt's value and the rerun's
    assert not [r for r in client.search_runs([runs[0].info.experiment_id]) if r.info.status == "RUNNING"]


def test_epoch_line_pairs_loss_and_metrics_of_the_same_epoch(caplog):
    import lightning as L

    from pandemonium.models.training import EpochSummary

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).mean()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", float(self.current_epoch))

        def on_validation_epoch_end(self):  # like torchmetrics' compute() in the task module
            self.log("val/accuracy", float(self.current_epoch))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = L.Trainer(max_epochs=3, callbacks=[EpochSummary()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    with caplog.at_level(logging.INFO, logger="pandemonium.models.training"):
        trainer.fit(Module(), data, data)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 3  # the last epoch too
    for epoch, line in enumerate(lines):
        assert f"'val/loss': {float(epoch)}" in line and f"'val/accuracy': {float(epoch)}" in line, line


def test_warnings_land_in_the_run_folder_and_survive_continue(tmp_path):
    from pandemonium.modes.steps.checks import warn_zero_success

    with run_warnings.collecting(tmp_path) as found:
        warn_zero_success({"digits/targeted_success": 0.0, "shapes/untargeted_success": 0.4,
                           "x/success": float("nan")})
        run_warnings.check_patch_size("digits", 2, 3)
    assert [w.kind for w in found] == ["zero_success", "tiny_patch"]
    assert run_warnings.read_warnings(tmp_path) == found
    with run_warnings.collecting(tmp_path) as again:  # a `continue` keeps what the first attempt found
        run_warnings.check_patch_size("digits", 2, 3)
    assert again == found
    lines = run_warnings.summary_lines("attack", tmp_path, [], again)
    assert any("targeted_success = 0" in line for line in lines)


def test_chance_level_model_warns_from_its_record():
    from types import SimpleNamespace

    from pandemonium.modes.steps.models import check_trained_model

    struct = SimpleNamespace(name="digits", num_classes=10)
    with run_warnings.collecting() as found:
        assert check_trained_model(struct, {"val/accuracy": 0.12, "val/loss": 2.3}) is not None
        assert check_trained_model(struct, {"val/accuracy": 0.9}) is None
        assert check_trained_model(SimpleNamespace(name="det", num_classes=3), {"val/map": 0.0}) is None
    assert [w.task for w in found] == ["digits"]
