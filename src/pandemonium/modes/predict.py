"""``pandemonium predict``: the stored model's predictions for every split of each task.

One file per split through the FileManager (key ``predictions``), attached as
``struct.paths["predictions"] = {split: path}``; the task type's ``TaskTypeSpec.prediction_table``
decides the content. For the built-in task types:

* classification / multilabel / regression: CSV, one row per sample (``sample_id``, target, prediction,
  class probabilities),
* segmentation: ``.npz`` with ``sample_ids`` and the predicted masks (uint8/int16 ``N x H x W``),
* detection: JSON list of ``{"sample_id", "boxes" (xyxy pixels), "scores", "labels"}`` after NMS.

    pandemonium predict task_list=[shapes_det] mode.splits=[test]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pandemonium.errors import ConfigError
from pandemonium.modes.steps.routine import load_stored_model, queue_per_task
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)

PREDICTIONS_KEY = "predictions"
VALID_SPLITS = ("train", "val", "test", "all")


class PredictScheduler(AbstractBaseScheduler):
    """Subroutine ``predict``: write predictions of the stored model per split."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["predict"])
        splits = OmegaConf.select(cfg, "mode.splits", default=None) or ["test"]
        self.splits = [str(s) for s in splits]
        bad = [s for s in self.splits if s not in VALID_SPLITS]
        if bad:
            raise ConfigError(f"mode.splits: unknown split(s) {bad}; choose from {list(VALID_SPLITS)}")

    def create_routine(self) -> None:
        queue_per_task(self, "predict", self.predict_task, self.cfg.task_list)

    def predict_task(self, task_name: str) -> dict[str, str]:
        from pandemonium.models.training import run_model

        struct, model, _, device = load_stored_model(self, task_name)
        datamodule = self.create_datamodule(struct)
        written: dict[str, str] = {}
        for split in self.splits:
            outputs = run_model(model, datamodule.eval_dataloader(split), struct.task_type, device)
            path = write_predictions(self.fm, struct, split, outputs)
            written[split] = str(path)
            log.info("task %s: %d %s predictions -> %s", task_name, len(outputs["sample_ids"]), split, path)
        struct.paths[PREDICTIONS_KEY] = dict(written)
        return written


def write_predictions(fm: Any, struct: Any, split: str, outputs: dict[str, Any]) -> Path:
    """Store the :func:`~pandemonium.models.training.run_model` ``outputs`` of one split; returns the path.

    The task type's ``TaskTypeSpec.prediction_table`` decides the content; its kind decides the file: a
    ``pandas.DataFrame`` -> CSV (``sample_id`` and ``split`` first), a list of per-sample dicts -> JSON,
    a dict of arrays -> ``.npz`` (with ``sample_ids`` and ``class_names``).
    """
    import pandas as pd

    from pandemonium.tasktypes import task_type_spec

    ids = outputs["sample_ids"]
    names = list(struct.class_names)
    table = task_type_spec(struct.task_type).need("prediction_table")(outputs, names, split)

    def path_for(obj: Any, suffix: str) -> Path:
        return Path(fm.construct_saving_path(obj=obj, key=PREDICTIONS_KEY, task_name=struct.name,
                                             file_name=f"{split}.{suffix}"))

    if isinstance(table, pd.DataFrame):
        table = table.reset_index(drop=True)
        table.insert(0, "split", split)
        table.insert(0, "sample_id", ids)
        path = path_for(table, "csv")
        table.to_csv(path, index=False)
        return path
    if isinstance(table, list):
        records = [{"sample_id": sid, **record} for sid, record in zip(ids, table)]
        path = path_for(records, "json")
        path.write_text(json.dumps({"task": struct.name, "split": split, "class_names": names,
                                    "predictions": records}))
        return path
    if isinstance(table, dict):
        path = path_for(table, "npz")
        with open(path, "wb") as fh:
            np.savez_compressed(fh, sample_ids=np.asarray(ids), class_names=np.asarray(names), **table)
        return path
    raise ConfigError(
        f"task {struct.name!r}: prediction_table of task type {struct.task_type.value!r} returned "
        f"{type(table).__name__}; expected a DataFrame, a list of dicts or a dict of arrays"
    )
