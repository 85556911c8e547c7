"""``pandemonium predict``: the stored model's predictions for every split of each task.

One file per split through the FileManager (key ``predictions``), attached as
``struct.paths["predictions"] = {split: path}``:

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
        if "predict" in self.subroutines:
            for task in self.cfg.task_list:
                self.commands.append(self.predict_task)
                self.params.append([task])

    def predict_task(self, task_name: str) -> dict[str, str]:
        from pandemonium.models.storage import attach_stored_model, load_task_model
        from pandemonium.models.training import resolve_device, run_model

        struct = self.get_struct(task_name)
        attach_stored_model(struct, self.fm)
        device = resolve_device(str(OmegaConf.select(self.cfg, "device", default="auto")))
        model, _ = load_task_model(struct, map_location=device)
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
    """Store the :func:`~pandemonium.models.training.run_model` ``outputs`` of one split; returns the path."""
    import pandas as pd

    task_type = struct.task_type.value
    ids = outputs["sample_ids"]
    names = list(struct.class_names)
    if task_type == "detection":
        records = [
            {"sample_id": sid, "boxes": p["boxes"].tolist(), "scores": p["scores"].tolist(),
             "labels": p["labels"].tolist(), "label_names": [names[i] for i in p["labels"].tolist()] if names else []}
            for sid, p in zip(ids, outputs["preds"])
        ]
        path = fm.construct_saving_path(obj=records, key=PREDICTIONS_KEY, task_name=struct.name, file_name=f"{split}.json")
        Path(path).write_text(json.dumps({"task": struct.name, "split": split, "class_names": names,
                                          "predictions": records}))
        return Path(path)
    if task_type == "semantic_segmentation":
        masks = outputs["preds"].numpy()
        masks = masks.astype(np.uint8 if len(names) <= 256 else np.int16)
        path = fm.construct_saving_path(obj=masks, key=PREDICTIONS_KEY, task_name=struct.name, file_name=f"{split}.npz")
        with open(path, "wb") as fh:
            np.savez_compressed(fh, sample_ids=np.asarray(ids), masks=masks, class_names=np.asarray(names))
        return Path(path)
    frame = pd.DataFrame({"sample_id": ids, "split": split})
    preds = outputs["preds"]
    if task_type == "classification":
        frame["target"] = outputs["target"].numpy()
        frame["pred"] = preds.argmax(dim=1).numpy()
        frame["pred_name"] = [names[i] for i in frame["pred"]] if names else frame["pred"]
        for i, name in enumerate(names or range(preds.shape[1])):
            frame[f"prob_{name}"] = outputs["scores"][:, i].numpy()
    elif task_type == "multilabel_classification":
        for i, name in enumerate(names or range(preds.shape[1])):
            frame[f"target_{name}"] = outputs["target"][:, i].numpy()
            frame[f"pred_{name}"] = (outputs["scores"][:, i] > 0.5).int().numpy()
            frame[f"prob_{name}"] = outputs["scores"][:, i].numpy()
    else:
        frame["target"] = outputs["target"].numpy()
        frame["pred"] = preds.numpy()
    path = fm.construct_saving_path(obj=frame, key=PREDICTIONS_KEY, task_name=struct.name, file_name=f"{split}.csv")
    frame.to_csv(path, index=False)
    return Path(path)
