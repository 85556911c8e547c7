"""``pandemonium adopt``: register a pretrained model as the stored model of each task, without training.

    pandemonium adopt task_list=[my_photos] model.source=/models/net.onnx model.output.kind=probabilities
    pandemonium test task_list=[my_photos]          # its quality on the test split
    pandemonium attack task_list=[my_photos]        # a patch against it

Each ``adopt`` step loads ``model.source`` (:mod:`pandemonium.models.imported`), wraps it in the
adapters ``model.input`` / ``model.output`` declare, checks it on a real batch of the task
(``mode.batch_size`` images: output shape and range, fixed batch sizes) and stores it through the
FileManager (key ``models``) in ``struct.paths["models"]``. Only ``model.source``, ``model.input`` and
``model.output`` are read: a factory gets its own kwargs, never the built-in model's.
``run()`` returns ``{task: {"path", "query_only"}}``.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pandemonium.modes.steps.routine import queue_per_task
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)


class AdoptScheduler(AbstractBaseScheduler):
    """Subroutine ``adopt``: check and store the user's model for every task (independent per task)."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["adopt"])
        self.results: dict[str, dict[str, Any]] = {}

    def create_routine(self) -> None:
        queue_per_task(self, "adopt", self.adopt)

    def adopt(self, task_name: str) -> dict[str, Any]:
        from pandemonium.models.imported import adopt_model
        from pandemonium.models.onnx_model import OnnxModel

        struct = self.get_struct(task_name)
        model_cfg = {key: OmegaConf.select(self.cfg, f"model.{key}", default=None) for key in ("source", "input", "output")}
        batch = int(OmegaConf.select(self.cfg, "mode.batch_size", default=8) or 8)
        path, model = adopt_model(struct, model_cfg, fm=self.fm, batch_size=batch)
        struct.paths["models"] = path
        result = {"path": str(path), "query_only": isinstance(model.model, OnnxModel)}
        log.info("task %s: adopted %s as its model (%s)", task_name, model_cfg["source"], path)
        self.results[task_name] = result
        return result

    def finish(self) -> Any:
        return self.results or self.last_result
