"""MLflow run contents (read back with MlflowClient from a tmp SQLite), TensorBoard events, URI checks."""

from __future__ import annotations

import socket
import time

import mlflow
import pytest
import yaml

from pandemonium.attack.training import MLflowLogger
from pandemonium.tracking.mlflow_utils import (
    MlflowUnreachableError,
    check_tracking_uri,
    ensure_experiment,
    flatten_config,
    log_flat_params,
    resolve_tracking_uri,
    start_run,
    use_tracking_uri,
)

from .test_trainer_fit import ev, make_trainer, quiet


@pytest.fixture(scope="module")
def tracked_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    trainer = make_trainer(out, callbacks=quiet(mlflow=True, tensorboard=True), out_dir=out / "fit")
    result = trainer.fit(4)
    return trainer, result


def _uri(trainer):
    return trainer.callback(MLflowLogger).uri


def _client(trainer):
    return mlflow.MlflowClient(tracking_uri=_uri(trainer))


def test_default_uri_is_sqlite_in_the_results_folder(tracked_fit):
    trainer, result = tracked_fit
    assert _uri(trainer) == f"sqlite:///{(trainer.out_dir / 'mlflow.db').absolute()}"
    assert (trainer.out_dir / "mlflow.db").is_file()
    assert resolve_tracking_uri("http://x:5000", "/tmp") == "http://x:5000"


def test_mlflow_run_has_description_params_metrics_and_artifacts(tracked_fit):
    trainer, result = tracked_fit
    client = _client(trainer)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert "ToyImplant" in run.data.tags["mlflow.note.content"]
    params = run.data.params
    assert params["trainer.optimizer"] == "adam"
    assert params["trainer.weights.target"] == "1.0"
    assert params["pipeline.stages.0._target_"].endswith("ToyImplant")
    assert params["pipeline.stages.1.amount"] == "0.1"
    metrics = run.data.metrics
    assert "train/target" in metrics and "train/lr" in metrics
    assert "eval/total_patch" in metrics and "eval/untargeted_success_ci_high" in metrics
    history = client.get_metric_history(result.run_id, "train/target")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    artifacts |= {a.path for folder in ("patch", "eval") for a in client.list_artifacts(result.run_id, folder)}
    assert {"pipeline.yaml", "patch/patch_last.png", "patch/patch_best.png"} <= artifacts
    assert any(a.startswith("eval/") and a.endswith(".parquet") for a in artifacts)
    assert {"plots/loss.png", "plots/eval_metric.png"} <= {a.path for a in client.list_artifacts(result.run_id, "plots")}
    # artifacts live beside the database, not in ./mlruns of the current directory
    assert (trainer.out_dir / "mlartifacts").is_dir()


def test_tensorboard_events_beside_the_database(tracked_fit):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, result = tracked_fit
    (run_dir,) = (trainer.out_dir / "tensorboard").iterdir()
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/target", "train/lr", "eval/total_patch"} <= set(tags["scalars"])
    assert "patch" in tags["images"] and "eval/before_after" in tags["images"]
    assert "ToyBrightness/input_vs_control" in tags["images"]  # the stage's own log_vizualizations
    assert "eval_hist/target_delta" in tags["histograms"]


def test_child_run_inside_an_active_parent(tmp_path, tracked_fit):
    uri = _uri(tracked_fit[0])  # reuse the module's database: creating one costs seconds
    with use_tracking_uri(uri):
        # the parent's experiment keeps artifacts in tmp_path (MLflow's Default one uses ./mlruns)
        experiment = ensure_experiment("mode-parent", tmp_path / "parent-artifacts")
    with use_tracking_uri(uri), mlflow.start_run(run_name="mode", experiment_id=experiment) as parent:
        trainer = make_trainer(tmp_path, callbacks=quiet(mlflow=True), out_dir=tmp_path)
        result = trainer.fit(1)
        child = mlflow.MlflowClient().get_run(result.run_id)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert mlflow.active_run().info.run_id == parent.info.run_id
    # the child went to the parent's store although its own default would be tmp_path/mlflow.db
    assert not (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "parent-artifacts").is_dir()


def test_unreachable_uri_fails_at_start(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    start = time.perf_counter()
    with pytest.raises(MlflowUnreachableError, match=f"127.0.0.1:{port}.*unreachable"):
        make_trainer(tmp_path, callbacks=quiet(mlflow=f"http://127.0.0.1:{port}"))
    assert time.perf_counter() - start < 10
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(MlflowUnreachableError, match="cannot open SQLite file"):
        check_tracking_uri(f"sqlite:///{blocker}/mlflow.db")
    with pytest.raises(MlflowUnreachableError, match="not writable"):
        check_tracking_uri(f"file://{blocker}/runs")
    assert check_tracking_uri(f"file://{tmp_path}/runs") == f"file://{tmp_path}/runs"


def test_long_and_invalid_params_go_to_a_yaml_artifact(tmp_path, tracked_fit):
    uri = _uri(tracked_fit[0])
    cfg = {"short": 1, "nested": {"long": "x" * 7000, "list": [1, 2]}, "bad key!": 3}
    assert flatten_config(cfg) == {"short": 1, "nested.long": "x" * 7000, "nested.list.0": 1,
                                   "nested.list.1": 2, "bad key!": 3}
    with use_tracking_uri(uri), start_run(name="params", artifact_location=tmp_path / "art") as run:
        reasons = log_flat_params(cfg)
    assert set(reasons) == {"nested.long", "bad key!"}
    client = mlflow.MlflowClient(tracking_uri=uri)
    logged = client.get_run(run.info.run_id).data.params
    assert logged == {"short": "1", "nested.list.0": "1", "nested.list.1": "2"}
    path = client.download_artifacts(run.info.run_id, "params_not_logged.yaml", str(tmp_path))
    dumped = yaml.safe_load(open(path))
    assert dumped["params"]["nested.long"] == "x" * 7000 and dumped["params"]["bad key!"] == 3


def test_resumed_fit_continues_its_mlflow_run(tmp_path, tracked_fit):
    uri = _uri(tracked_fit[0])
    first = make_trainer(tmp_path, callbacks=quiet(mlflow=uri), evaluation=ev(every=2)).fit(4)
    resumed = make_trainer(tmp_path, callbacks=quiet(mlflow=uri), evaluation=ev(every=2)).fit(
        6, resume_from=first.checkpoint_path)
    assert resumed.run_id == first.run_id
    client = mlflow.MlflowClient(tracking_uri=uri)
    steps = sorted(m.step for m in client.get_metric_history(first.run_id, "train/target"))
    assert steps == [1, 2, 3, 4, 5, 6]
    assert client.get_run(first.run_id).info.status == "FINISHED"
