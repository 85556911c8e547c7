"""The task's model: train and store one (:func:`train_task`, the ``train`` mode's step), or find and
load the stored one, training it first when none exists (:class:`ModelSource`, used by ``attack``).

Every trained model stores the fingerprint of what made it (:func:`training_fingerprint`: the task's
data description, the model config, the task type's trainer settings, sampling, augmentations,
loaders, fold) in its artifact's ``extra``. :meth:`ModelSource.ensure` reuses a stored model of the
task only when its fingerprint matches the current config; a changed config trains anew.

Example:
    >>> training_fingerprint(struct, cfg)  # doctest: +SKIP
    'b1946ac92492d234'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from pandemonium.attack.presets import AttackConfigError
from pandemonium.modes.steps.context import ModeContext
from pandemonium.plain import to_plain
from pandemonium.runs import warnings as run_warnings
from pandemonium.runs.file_manager import FileManager
from pandemonium.runs.provenance import artifact_id

log = logging.getLogger(__name__)

__all__ = ["FINGERPRINT_KEY", "ModelSource", "check_trained_model", "train_task", "training_fingerprint"]

#: key of the training fingerprint in a model artifact's ``extra``
FINGERPRINT_KEY = "config_fingerprint"

# settings that change how training is shown or scheduled on the machine, never the model it makes
_COSMETIC = {("lightning", "enable_progress_bar"), ("lightning", "accelerator"), ("lightning", "devices"),
             ("num_threads",), ("task_type_overrides",)}
_STRUCT_VOLATILE = ("paths", "task_dir", "description", "license", "keywords")


def _drop(tree: Any, path: tuple[str, ...] = ()) -> Any:
    if isinstance(tree, dict):
        return {k: _drop(v, (*path, str(k))) for k, v in tree.items() if (*path, str(k)) not in _COSMETIC}
    return tree


def training_fingerprint(struct: Any, cfg: DictConfig) -> str:
    """A short hash of everything that decides which model training makes for ``struct`` under ``cfg``.

    The seed is left out on purpose: a victim trained with another seed is an equally good victim of
    the same config, so ``attack`` reuses what ``demo`` or ``train`` stored (and vice versa).
    """
    from pandemonium.models.factory import model_config_from
    from pandemonium.models.training import trainer_settings

    sampling = to_plain(OmegaConf.select(cfg, "sampling", default=None)) or {}
    description = {
        "task": {k: v for k, v in to_plain(struct.to_dict()).items() if k not in _STRUCT_VOLATILE},
        "model": to_plain(model_config_from(OmegaConf.select(cfg, "model", default=None))),
        "trainer": _drop(to_plain(trainer_settings(OmegaConf.select(cfg, "trainer", default=None), struct.task_type))),
        "sampling": {k: v for k, v in sampling.items() if k not in ("num_workers", "eval_batch_size")},
        "augmentations": to_plain(OmegaConf.select(cfg, "augmentations", default=None)),
        "loaders": to_plain(OmegaConf.select(cfg, "loaders", default=None)),
        "fold": int(OmegaConf.select(cfg, "fold", default=0) or 0),
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_trained_model(struct: Any, metrics: dict[str, Any]) -> run_warnings.RunWarning | None:
    """Warn when a classifier's validation (or test) accuracy is at chance level for its classes."""
    num_classes = getattr(struct, "num_classes", None)
    accuracy = next((metrics[k] for k in ("val/accuracy", "test/accuracy", "accuracy") if k in metrics), None)
    if accuracy is None or not num_classes:
        return None
    return run_warnings.check_model_quality(struct.name, float(accuracy), int(num_classes))


def train_task(struct: Any, datamodule: Any, cfg: DictConfig, fm: FileManager, run_dir: Path,
               seed: int, parent_run_id: str | None = None) -> dict[str, Any]:
    """Fit the ``model`` group's model on the task with Lightning, store it (key ``models``) and attach it
    to ``struct.paths["models"]``. Returns the stored path, the monitored metric and the fit's metrics.
    ``parent_run_id``: the mode's MLflow run, parent of the training run. Warns when the model is at
    chance level (:func:`check_trained_model`)."""
    from pandemonium.models.factory import build_model, model_config_from
    from pandemonium.models.storage import save_model_artifact
    from pandemonium.models.training import fit, make_loggers

    task_name = struct.name
    fingerprint = training_fingerprint(struct, cfg)  # before training: the config as given
    model_cfg = model_config_from(OmegaConf.select(cfg, "model", default=None))
    model = build_model(struct, model_cfg)
    fold = int(OmegaConf.select(cfg, "fold", default=0) or 0)
    run_name = f"train_{task_name}_fold{fold}"
    loggers = make_loggers(OmegaConf.select(cfg, "logging", default=None), Path(str(cfg.out_dir)), run_dir, run_name)
    if parent_run_id:  # a child of the mode's run from its first line, so `continue` can close it as KILLED
        for logger in loggers:
            if type(logger).__name__ == "MLFlowLogger":
                logger.tags = {**(logger.tags or {}), "mlflow.parentRunId": parent_run_id}
    root_dir = run_dir / "train" / task_name
    # Lightning numbers a second best.ckpt best-v1.ckpt: a killed attempt's checkpoints would stay beside the
    # new ones (training restarts from scratch, so nothing of them is used)
    shutil.rmtree(root_dir / "checkpoints", ignore_errors=True)
    for logger in loggers:
        logger.log_hyperparams({"task": task_name, "fold": fold, "model": model_cfg,
                                "trainer": OmegaConf.select(cfg, "trainer", default=None)})
    outcome = fit(
        model,
        struct,
        datamodule,
        trainer_cfg=OmegaConf.select(cfg, "trainer", default=None),
        root_dir=root_dir,
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
               "stopped_by_time_cap": outcome["stopped_by_time_cap"], "run_dir": str(run_dir),
               FINGERPRINT_KEY: fingerprint},
    )
    struct.paths["models"] = path
    log.info("task %s: model stored at %s (%s, %.1fs)", task_name, path, outcome["metrics"], outcome["seconds"])
    check_trained_model(struct, outcome["metrics"])
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
        model, meta = load_model_artifact(path, task_name=struct.name, map_location=self.ctx.device)
        check_trained_model(struct, dict((meta or {}).get("metrics") or {}))  # a reused model may be at chance too
        return model, meta

    def matching(self, struct: Any) -> Path | None:
        """The newest stored model of the task in this project that fits the current config, or ``None``:
        one trained here under the same :func:`training_fingerprint`, or one brought along (``adopt``,
        which has no training recipe to compare, so it is used as it is)."""
        from pandemonium.models.storage import ModelArtifactError, read_artifact

        wanted = training_fingerprint(struct, self.ctx.cfg)
        for path in reversed(self.ctx.fm.list_artifacts("models", struct.name)):
            try:
                extra = read_artifact(path, struct.name).get("extra") or {}
            except ModelArtifactError as err:  # a foreign or broken file is not a candidate
                log.info("task %s: skipping stored model %s (%s)", struct.name, path, err)
                continue
            if extra.get(FINGERPRINT_KEY, wanted) == wanted:
                return path
        return None

    def ensure(self, struct: Any, make_datamodule: Callable[[Any], Any], seed: int) -> dict[str, Any]:
        """Train the task's model with :func:`train_task` unless a usable one exists: the one attached to
        the struct (this run, ``continue`` or ``reuse.models``), else a stored one of the same config
        (:meth:`matching`)."""
        existing = struct.paths.get("models") or self.matching(struct)
        if existing is not None:
            struct.paths["models"] = Path(existing)
            log.info("task %s: using stored model %s", struct.name, existing)
            return {"model": str(existing), "trained": False}
        with lightning_progress_off(self.ctx.cfg):
            tracking = self.ctx.tracking
            parent = tracking.run_id if tracking is not None and tracking.enabled else None
            result = train_task(struct, make_datamodule(struct), self.ctx.cfg, self.ctx.fm, self.ctx.run_dir, seed,
                                parent_run_id=parent)
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
