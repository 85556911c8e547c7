"""The MLflow run tree of one mode invocation: a parent run, child runs per task and step."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)


def mlflow_name(key: str) -> str:
    """A metric name MLflow accepts (alphanumerics, ``_ - . space : /``); ``a -> b`` becomes ``a_to_b``."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(key).replace(" -> ", "_to_"))


class ModeTracking:
    """One MLflow parent run per mode invocation; children per task are opened by the steps.

    The parent run id is kept in the run directory so that ``continue`` resumes the same parent.
    """

    FILE = "mlflow_parent_run.json"

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str | None, run_dir: Path,
                 name: str, tags: Mapping[str, str]) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_dir = run_dir
        self.name = name
        self.tags = dict(tags)
        self.run_id: str | None = None
        if enabled:
            self._start()

    @classmethod
    def from_scheduler(cls, scheduler: AbstractBaseScheduler) -> ModeTracking:
        cfg = scheduler.cfg
        mlflow_cfg = ((cfg.get("logging") or {}).get("mlflow")) or {}
        enabled = bool(mlflow_cfg.get("enabled", True))
        uri = experiment = None
        if enabled:
            from pandemonium.tracking.mlflow_utils import check_tracking_uri, resolve_tracking_uri

            uri = check_tracking_uri(resolve_tracking_uri(mlflow_cfg.get("tracking_uri"), cfg.out_dir))
            experiment = str(mlflow_cfg.get("experiment_name") or cfg.proj)
        mode_id = str((cfg.get("mode") or {}).get("id"))
        tags = {"pandemonium.mode": mode_id, "pandemonium.proj": str(cfg.proj),
                "pandemonium.run_dir": str(scheduler.run_dir), "pandemonium.tasks": ",".join(scheduler.task_list)}
        return cls(enabled, uri, experiment, scheduler.run_dir, f"{mode_id} {scheduler.run_dir.name}", tags)

    def _start(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(self.experiment)
        while mlflow.active_run() is not None:  # a leftover run of an earlier mode in this process
            mlflow.end_run()
        record = self.run_dir / self.FILE
        run_id = json.loads(record.read_text()).get("run_id") if record.exists() else None
        if run_id:
            run = mlflow.start_run(run_id=run_id)
        else:
            run = mlflow.start_run(run_name=self.name, tags=self.tags)
            record.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": self.tracking_uri}))
        self.run_id = run.info.run_id

    def tag_child(self, run_id: str | None, tasks: Sequence[str], models: Sequence[str], patch: str) -> None:
        if not self.enabled or not run_id:
            return
        import mlflow

        client = mlflow.MlflowClient()
        client.set_tag(run_id, "task", ",".join(tasks))
        client.set_tag(run_id, "model_id", ",".join(models))
        client.set_tag(run_id, "patch_id", patch)

    def adopt(self, run_name: str, **tags: str) -> None:
        """Make the runs named ``run_name`` that started during this mode run (e.g. the Lightning
        logger's training run, which opens its own top-level run) children of the parent run."""
        if not self.enabled or not self.run_id:
            return
        import mlflow

        client = mlflow.MlflowClient()
        try:
            parent = client.get_run(self.run_id)
            found = client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"attributes.run_name = '{run_name}' and attributes.start_time >= {parent.info.start_time}",
            )
            for run in found:
                if run.info.run_id == self.run_id or "mlflow.parentRunId" in run.data.tags:
                    continue
                client.set_tag(run.info.run_id, "mlflow.parentRunId", self.run_id)
                for key, value in tags.items():
                    client.set_tag(run.info.run_id, key, str(value))
        except Exception as err:  # noqa: BLE001 - tidying the run tree must never fail a finished step
            log.warning("MLflow: could not attach run %s to the mode's parent run: %s", run_name, err)

    def log_evaluation(self, task: str, summary: Mapping[str, Any]) -> None:
        """A child run ``evaluate/<task>`` with the headline rate, its CI and the ids as tags."""
        if not self.enabled:
            return
        import mlflow

        tags = {"task": task, "model_id": str(summary.get("model_id", "")), "patch_id": str(summary.get("patch_id", "")),
                "pandemonium.step": "evaluate"}
        with mlflow.start_run(run_name=f"evaluate/{task}", nested=True, tags=tags):
            metrics = {k: float(v) for k, v in summary.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
            mlflow.log_metrics({mlflow_name(k): v for k, v in metrics.items()})

    def log_metrics(self, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        import mlflow

        clean = {mlflow_name(k): float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        if clean:
            mlflow.MlflowClient().log_batch(self.run_id, metrics=[
                mlflow.entities.Metric(k, v, 0, 0) for k, v in clean.items()])

    def finish(self, headline: Mapping[str, float] | None = None) -> None:
        if not self.enabled:
            return
        import mlflow

        if headline:
            self.log_metrics(headline)
        if mlflow.active_run() is not None:
            mlflow.end_run(status="FINISHED")
        self.enabled = False

    def fail(self) -> None:
        if not self.enabled:
            return
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.end_run(status="FAILED")
        self.enabled = False
