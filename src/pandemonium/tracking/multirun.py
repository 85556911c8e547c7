"""A Hydra multirun as one MLflow parent run with one child per job, tagged with the job's overrides.

``pandemonium attack -m attack.lr=0.01,0.05`` runs two jobs; :class:`MultirunGroup` (a Hydra
callback registered in ``configs/config.yaml``) opens a ``multirun <sweep>`` parent run before the
first job and tells each job (through environment variables, since Hydra's basic launcher runs the
jobs one after another in this process) its parent and overrides; :func:`multirun_tags` turns that
into the tags the mode's own parent run starts with (``mlflow.parentRunId``, ``pandemonium.overrides``,
``pandemonium.job``), so the whole sweep is one tree in MLflow.

>>> multirun_tags({})
{}
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

__all__ = ["PARENT_ENV", "OVERRIDES_ENV", "MultirunGroup", "multirun_tags"]

PARENT_ENV = "PANDEMONIUM_MULTIRUN_PARENT"
OVERRIDES_ENV = "PANDEMONIUM_MULTIRUN_JOB"


def multirun_tags(environ: Mapping[str, str] | None = None, tracking_uri: str | None = None) -> dict[str, str]:
    """Tags that make a mode's parent run a child of the current multirun (empty outside a multirun,
    or when the mode logs to another MLflow store than the sweep's parent)."""
    env = os.environ if environ is None else environ
    parent = env.get(PARENT_ENV)
    if not parent:
        return {}
    info = json.loads(parent)
    if tracking_uri is not None and info.get("tracking_uri") != tracking_uri:
        return {}
    job = json.loads(env.get(OVERRIDES_ENV) or "{}")
    tags = {"mlflow.parentRunId": str(info["run_id"]), "pandemonium.sweep_dir": str(info.get("sweep_dir", ""))}
    if job:
        tags["pandemonium.job"] = str(job.get("num", ""))
        tags["pandemonium.overrides"] = " ".join(job.get("overrides", []))
        for override in job.get("overrides", []):
            key, sep, value = str(override).partition("=")
            if sep:
                tags[f"override.{key.lstrip('+~')}"] = value
    return tags


class MultirunGroup(Callback):
    """Hydra callback: one MLflow parent run per multirun; does nothing for a single run or with MLflow off."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.tracking_uri: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        mlflow_cfg = OmegaConf.select(config, "logging.mlflow", default=None) or {}
        if not mlflow_cfg.get("enabled", True):
            return
        try:
            import mlflow

            from pandemonium.tracking.mlflow_utils import ensure_experiment, resolve_tracking_uri
            from pandemonium.tracking.mode_run import ModeTracking

            out_dir = os.path.abspath(str(config.out_dir))
            self.tracking_uri = resolve_tracking_uri(mlflow_cfg.get("tracking_uri"), out_dir)
            mlflow.set_tracking_uri(self.tracking_uri)
            client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
            # the same experiment (and artifact folder) as the jobs' own parent runs
            experiment_id = ensure_experiment(str(mlflow_cfg.get("experiment_name") or config.proj),
                                              os.path.join(out_dir, ModeTracking.ARTIFACT_DIR))
            sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir", default=""))
            mode = str(OmegaConf.select(config, "mode.id", default=""))
            run = client.create_run(experiment_id, run_name=f"multirun {mode} {os.path.basename(sweep_dir)}",
                                    tags={"pandemonium.multirun": "true", "pandemonium.mode": mode,
                                          "pandemonium.sweep_dir": sweep_dir, "pandemonium.proj": str(config.proj)})
            self.run_id = run.info.run_id
            os.environ[PARENT_ENV] = json.dumps({"run_id": self.run_id, "tracking_uri": self.tracking_uri,
                                                 "sweep_dir": sweep_dir})
        except Exception as err:  # noqa: BLE001 - grouping runs must never stop the sweep
            log.warning("MLflow: no parent run for this multirun: %s", err)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        overrides = list(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        num = OmegaConf.select(config, "hydra.job.num", default=None)
        os.environ[OVERRIDES_ENV] = json.dumps({"num": num, "overrides": [str(o) for o in overrides]})

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None:
            return
        try:
            import mlflow

            mlflow.MlflowClient(tracking_uri=self.tracking_uri).set_terminated(self.run_id, "FINISHED")
        except Exception as err:  # noqa: BLE001
            log.warning("MLflow: could not close the multirun parent run: %s", err)
        finally:
            os.environ.pop(PARENT_ENV, None)
            os.environ.pop(OVERRIDES_ENV, None)
            self.run_id = None
