"""The MLflow run tree of one mode invocation: a parent run, child runs per task and step.

What it guarantees for the record:

- the tracking store and the artifacts live in the results folder (``<out_dir>/mlflow.db`` and
  ``<out_dir>/mlartifacts``), never in ``./mlruns`` of the working directory;
- the parent run holds the composed config as parameters, and at the end the report, the transfer
  matrix and the robustness curves the mode made, as artifacts;
- ``continue`` resumes the same parent run; runs of the killed attempt still RUNNING below it are
  closed as KILLED, and :meth:`ModeTracking.resumable_child` hands a step the id of its own unfinished
  run so that it resumes that run (one run per step, with the whole metric history).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)


def mlflow_name(key: str) -> str:
    """A metric name MLflow accepts (alphanumerics, ``_ - . space : /``); ``a -> b`` becomes ``a_to_b``."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(key).replace(" -> ", "_to_"))


def preset_record(preset: Mapping[str, Any]) -> dict[str, str]:
    """What an attack run records of its preset: name, target class, success metric and loss terms."""
    loss = preset.get("loss") or {}
    terms = [str(t.get("_target_", "")).rsplit(".", 1)[-1] for t in (loss.get("losses") or []) if isinstance(t, Mapping)]
    loss_name = ",".join(terms) or str(loss.get("_target_", "")).rsplit(".", 1)[-1]
    weights = preset.get("weights") or {}
    return {
        "preset": str(preset.get("name")),
        "target_class": str(preset.get("target_class")),
        "success_metric": str(preset.get("success_metric")),
        "loss": loss_name + (f" (weights {dict(weights)})" if weights else ""),
    }


class ModeTracking:
    """One MLflow parent run per mode invocation; children per task are opened by the steps.

    The parent run id is kept in the run directory so that ``continue`` resumes the same parent.
    """

    FILE = "mlflow_parent_run.json"
    #: artifact keys whose files of this run the parent run stores at the end (report, transfer, curves)
    ARTIFACT_KEYS: tuple[str, ...] = ("reports", "transfer", "curves")
    ARTIFACT_DIR = "mlartifacts"

    def __init__(self, enabled: bool, tracking_uri: str | None, experiment: str | None, run_dir: Path,
                 name: str, tags: Mapping[str, str], params: Mapping[str, Any] | None = None,
                 artifact_root: Path | None = None, created: Callable[[], Sequence[Mapping[str, Any]]] | None = None
                 ) -> None:
        self.enabled = enabled
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_dir = run_dir
        self.name = name
        self.tags = dict(tags)
        self.params = params
        self.artifact_root = artifact_root
        self.created = created
        self.run_id: str | None = None
        self.resumed = False
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
        from pandemonium.tracking.multirun import multirun_tags

        tags.update(multirun_tags(tracking_uri=uri))  # a job of a multirun: child of the sweep's parent run
        from omegaconf import OmegaConf

        params = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        return cls(enabled, uri, experiment, scheduler.run_dir, f"{mode_id} {scheduler.run_dir.name}", tags,
                   params=params, artifact_root=Path(str(cfg.out_dir)) / cls.ARTIFACT_DIR,
                   created=scheduler.fm.created_paths)

    def _start(self) -> None:
        import mlflow

        from pandemonium.tracking.mlflow_utils import ensure_experiment, log_flat_params

        mlflow.set_tracking_uri(self.tracking_uri)
        # created with an artifact folder in the results folder: MLflow's default is ./mlruns of the cwd
        experiment_id = ensure_experiment(str(self.experiment), self.artifact_root)
        mlflow.set_experiment(experiment_id=experiment_id)
        while mlflow.active_run() is not None:  # a leftover run of an earlier mode in this process
            mlflow.end_run()
        record = self.run_dir / self.FILE
        run_id = json.loads(record.read_text()).get("run_id") if record.exists() else None
        if run_id:
            self.resumed = True
            run = mlflow.start_run(run_id=run_id)
            self.run_id = run.info.run_id
            self.close_killed_children()
            return
        run = mlflow.start_run(run_name=self.name, tags=self.tags)
        record.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": self.tracking_uri}))
        self.run_id = run.info.run_id
        if self.params:
            params = {k: v for k, v in self.params.items() if k != "hydra"}
            try:
                log_flat_params(params, run_id=self.run_id)
            except Exception as err:  # noqa: BLE001 - a param MLflow refuses must not stop the mode
                log.warning("MLflow: could not log the config as parameters: %s", err)

    def _descendants(self, client: Any, status: str | None = None) -> list[Any]:
        """Runs below the parent at any depth (MLflow's search has no IN for tags: walk the tree here)."""
        parent = client.get_run(self.run_id)
        runs = client.search_runs([parent.info.experiment_id], max_results=50000,
                                  filter_string=f"attributes.start_time >= {parent.info.start_time}")
        by_parent: dict[str, list[Any]] = {}
        for run in runs:
            by_parent.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run)
        found, frontier = [], [self.run_id]
        while frontier:
            children = [c for pid in frontier for c in by_parent.get(pid, [])]
            found.extend(children)
            frontier = [c.info.run_id for c in children]
        return [r for r in found if status is None or r.info.status == status]

    def close_killed_children(self) -> list[str]:
        """Mark runs below the parent that a killed attempt left RUNNING as KILLED; their ids."""
        if not self.enabled or not self.run_id:
            return []
        import mlflow

        client = mlflow.MlflowClient()
        closed = []
        for run in self._descendants(client, status="RUNNING"):
            client.set_terminated(run.info.run_id, status="KILLED")
            closed.append(run.info.run_id)
        if closed:
            log.info("MLflow: %d run(s) of the interrupted attempt closed as KILLED", len(closed))
        return closed

    def resumable_child(self, run_name: str) -> str | None:
        """The id of the newest unfinished (KILLED/FAILED) run named ``run_name`` below the parent, for a
        step that reruns after ``continue`` to resume it (``mlflow.start_run(run_id=...)``) and keep its
        metric history, instead of opening a second run of the same name."""
        if not self.enabled or not self.run_id or not self.resumed:
            return None
        import mlflow

        runs = [r for r in self._descendants(mlflow.MlflowClient())
                if r.info.run_name == run_name and r.info.status in ("KILLED", "FAILED", "RUNNING")]
        return max(runs, key=lambda r: r.info.start_time).info.run_id if runs else None

    def log_produced_artifacts(self) -> list[str]:
        """Log the files of :attr:`ARTIFACT_KEYS` made in this run to the parent run; their paths."""
        if not self.enabled or not self.run_id or self.created is None:
            return []
        import mlflow

        client = mlflow.MlflowClient()
        logged = []
        for record in self.created():
            path = Path(str(record.get("path", "")))
            if record.get("key") in self.ARTIFACT_KEYS and path.is_file() and path.stat().st_size > 0:
                folder = "/".join(x for x in (str(record["key"]), record.get("task_name")) if x)
                client.log_artifact(self.run_id, str(path), artifact_path=folder)
                logged.append(str(path))
        return logged

    def tag_child(self, run_id: str | None, tasks: Sequence[str], models: Sequence[str], patch: str,
                  presets: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Tag an attack run with its tasks, model and patch ids and, per task, the preset, its target
        class and its loss (``attack.<task>.preset`` / ``.target_class`` / ``.loss``)."""
        if not self.enabled or not run_id:
            return
        import mlflow

        client = mlflow.MlflowClient()
        client.set_tag(run_id, "task", ",".join(tasks))
        client.set_tag(run_id, "model_id", ",".join(models))
        client.set_tag(run_id, "patch_id", patch)
        for task, preset in (presets or {}).items():
            for key, value in preset_record(preset).items():
                client.set_tag(run_id, mlflow_name(f"attack.{task}.{key}"), value)

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
                parent_tag = run.data.tags.get("mlflow.parentRunId")
                if run.info.run_id == self.run_id or parent_tag not in (None, self.run_id):
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
        # the split, the metric, the environment record and the wall-clock-cap flag, as the report shows them
        tags.update({k: str(summary[k]) for k in ("metric", "split", "model_stopped_by_time_cap") if k in summary})
        tags.update({f"env.{k}": str(v) for k, v in (summary.get("environment") or {}).items()})
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
        try:
            self.log_produced_artifacts()
        except Exception as err:  # noqa: BLE001 - the results are on disk; a tracking hiccup must not fail the mode
            log.warning("MLflow: could not log the mode's artifacts: %s", err)
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
