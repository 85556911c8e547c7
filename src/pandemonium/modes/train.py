"""``pandemonium train``: one model per task of ``task_list``, stored as a model artifact.

Each ``train`` step builds the model from the ``model`` group, fits it with a Lightning Trainer
(progress bar, best-checkpoint, early stopping, TensorBoard + MLflow loggers from the ``logging``
group), writes one artifact file through the FileManager (key ``models``) and attaches it to
``struct.paths["models"]``, where ``test``, ``predict``, ``attack`` and ``evaluate`` find it.

    pandemonium train task_list=[shapes_cls,digits] model=tiny trainer.lightning.max_epochs=5
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)


class TrainScheduler(AbstractBaseScheduler):
    """Subroutine ``train``: fit and store a model for every task (independent per task)."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["train"])
        self.results: dict[str, dict[str, Any]] = {}

    def create_routine(self) -> None:
        if "train" in self.subroutines:
            for task in self.cfg.task_list:
                self.commands.append(self.train_task)
                self.params.append([task])

    def train_task(self, task_name: str) -> dict[str, Any]:
        from pandemonium.models.factory import build_model, model_config_from
        from pandemonium.models.storage import save_model_artifact
        from pandemonium.models.training import fit, make_loggers

        struct = self.get_struct(task_name)
        model_cfg = model_config_from(OmegaConf.select(self.cfg, "model", default=None))
        model = build_model(struct, model_cfg)
        datamodule = self.create_datamodule(struct)
        fold = int(OmegaConf.select(self.cfg, "fold", default=0) or 0)
        run_name = f"train_{task_name}_fold{fold}"
        loggers = make_loggers(
            OmegaConf.select(self.cfg, "logging", default=None), Path(str(self.cfg.out_dir)), self.run_dir, run_name
        )
        for logger in loggers:
            logger.log_hyperparams({"task": task_name, "fold": fold, "model": model_cfg,
                                    "trainer": OmegaConf.select(self.cfg, "trainer", default=None)})
        outcome = fit(
            model,
            struct,
            datamodule,
            trainer_cfg=OmegaConf.select(self.cfg, "trainer", default=None),
            root_dir=self.run_dir / "train" / task_name,
            loggers=loggers,
            device=str(OmegaConf.select(self.cfg, "device", default="auto")),
            seed=int(self.step_seed if self.step_seed is not None else self.cfg.seed),
            log_every_n_steps=OmegaConf.select(self.cfg, "logging.log_every_n_steps", default=None),
        )
        path = save_model_artifact(
            model,
            struct,
            model_cfg,
            fm=self.fm,
            fold=fold,
            metrics=outcome["metrics"],
            extra={"seconds": outcome["seconds"], "epochs": outcome["epochs"], "monitor": outcome["monitor"],
                   "stopped_by_time_cap": outcome["stopped_by_time_cap"], "run_dir": str(self.run_dir)},
        )
        struct.paths["models"] = path
        log.info("task %s: model stored at %s (%s, %.1fs)", task_name, path, outcome["metrics"], outcome["seconds"])
        result = {"task": task_name, "path": str(path), "monitor": outcome["monitor"], **outcome["metrics"],
                  "seconds": outcome["seconds"], "epochs": outcome["epochs"]}
        self.results[task_name] = result
        return result

    def finish(self) -> Any:
        """Mean of the monitored validation metric over the tasks trained in this process (for sweeps);
        after a ``continue`` that trained nothing new, the last step's result."""
        values = [r[r["monitor"]] for r in self.results.values() if r.get("monitor") in r]
        return float(np.mean(values)) if values else self.last_result
