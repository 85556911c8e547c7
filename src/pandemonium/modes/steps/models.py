"""The task's model: train and store one (:func:`train_task`, the ``train`` mode's step), or find and
load the stored one, training it first when none exists (:class:`ModelSource`, used by ``attack``)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from pandemonium.attack.spec import AttackConfigError
from pandemonium.modes.steps.context import ModeContext
from pandemonium.runs.file_manager import FileManager
from pandemonium.runs.provenance import artifact_id

log = logging.getLogger(__name__)

__all__ = ["ModelSource", "train_task"]


def train_task(struct: Any, datamodule: Any, cfg: DictConfig, fm: FileManager, run_dir: Path,
               seed: int) -> dict[str, Any]:
    """Fit the ``model`` group's model on the task with Lightning, store it (key ``models``) and attach it
    to ``struct.paths["models"]``. Returns the stored path, the monitored metric and the fit's metrics."""
    from pandemonium.models.factory import build_model, model_config_from
    from pandemonium.models.storage import save_model_artifact
    from pandemonium.models.training import fit, make_loggers

    task_name = struct.name
    model_cfg = model_config_from(OmegaConf.select(cfg, "model", default=None))
    model = build_model(struct, model_cfg)
    fold = int(OmegaConf.select(cfg, "fold", default=0) or 0)
    run_name = f"train_{task_name}_fold{fold}"
    loggers = make_loggers(OmegaConf.select(cfg, "logging", default=None), Path(str(cfg.out_dir)), run_dir, run_name)
    for logger in loggers:
        logger.log_hyperparams({"task": task_name, "fold": fold, "model": model_cfg,
                                "trainer": OmegaConf.select(cfg, "trainer", default=None)})
    outcome = fit(
        model,
        struct,
        datamodule,
        trainer_cfg=OmegaConf.select(cfg, "trainer", default=None),
        root_dir=run_dir / "train" / task_name,
        loggers=loggers,
        device=str(OmegaConf.select(cfg, "device", default="auto")),
        seed=int(seed),
        log_every_n_steps=OmegaConf.select(cfg, "logging.log_every_n_steps", default=None),
    )
    path = save_model_artifact(
        model,
        struct,
        model_cfg,
        fm=fm,
        fold=fold,
        metrics=outcome["metrics"],
        extra={"seconds": outcome["seconds"], "epochs": outcome["epochs"], "monitor": outcome["monitor"],
               "stopped_by_time_cap": outcome["stopped_by_time_cap"], "run_dir": str(run_dir)},
    )
    struct.paths["models"] = path
    log.info("task %s: model stored at %s (%s, %.1fs)", task_name, path, outcome["metrics"], outcome["seconds"])
    return {"task": task_name, "path": str(path), "monitor": outcome["monitor"], **outcome["metrics"],
            "seconds": outcome["seconds"], "epochs": outcome["epochs"]}


class ModelSource:
    """Finds, loads or trains the model of a task (``ctx`` supplies config, files, device, tracking)."""

    def __init__(self, ctx: ModeContext) -> None:
        self.ctx = ctx

    def load(self, struct: Any) -> tuple[Any, dict[str, Any]]:
        """The task's stored model and its record; attaches its path to ``struct.paths["models"]``."""
        from pandemonium.models.storage import load_model_artifact

        path = self.ctx.model_path(struct)
        if path is None:
            raise AttackConfigError(f"task {struct.name!r} has no stored model (enable the `train` subroutine)")
        struct.paths["models"] = path
        return load_model_artifact(path, task_name=struct.name, map_location=self.ctx.device)

    def ensure(self, struct: Any, make_datamodule: Callable[[Any], Any], seed: int) -> dict[str, Any]:
        """Train the task's model with :func:`train_task` unless one is stored already."""
        existing = self.ctx.model_path(struct)
        if existing is not None:
            struct.paths["models"] = existing
            log.info("task %s: using stored model %s", struct.name, existing)
            return {"model": str(existing), "trained": False}
        with lightning_progress_off(self.ctx.cfg):
            result = train_task(struct, make_datamodule(struct), self.ctx.cfg, self.ctx.fm, self.ctx.run_dir, seed)
        struct.paths["models"] = Path(result["path"])
        if self.ctx.tracking is not None:
            self.ctx.tracking.adopt(f"train_{struct.name}_fold{self.ctx.fold}", task=struct.name,
                                    model_id=artifact_id(result["path"]))
        return {"model": result["path"], "trained": True,
                **{k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}


@contextlib.contextmanager
def lightning_progress_off(cfg: DictConfig) -> Iterator[None]:
    """Lightning's default progress bar is rich's live display, which clashes with the executor's
    live step bar (rich keeps one live stack per console); training logs its epochs instead."""
    node = OmegaConf.select(cfg, "trainer.lightning")
    if node is None:
        yield
        return
    old = node.get("enable_progress_bar")
    with open_dict(node):
        node["enable_progress_bar"] = False
    try:
        yield
    finally:
        with open_dict(node):
            node["enable_progress_bar"] = old
