"""Fitting and running task models; shared by the train / test / predict modes and the benchmark.

The schedulers stay thin (plan, files, structs) and call these functions, so the same code path is
timed by ``benchmarks/model_quality.py`` and exercised by the tests.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pandemonium.models.lightning_module import TaskLightningModule, metrics_config
from pandemonium.models.metrics import metric_inputs
from pandemonium.tasks.attributes import Modality, TaskType
from pandemonium.tasktypes import task_type_spec

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _lightning_info_silenced():
    """Lightning's INFO lines (GPU/TPU availability, tips) reach the console twice under Hydra's root
    handler and say nothing our own per-epoch log lines do not; warnings still come through."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

DEFAULT_TRAINER: dict[str, Any] = {
    "lightning": {"max_epochs": 30, "accelerator": "auto", "devices": 1, "deterministic": True},
    "optimizer": {"_target_": "torch.optim.AdamW", "lr": 3e-3, "weight_decay": 1e-4},
    "lr_schedule": "onecycle",
    "early_stopping": {"enabled": True, "patience": 8, "min_delta": 0.0},
    "checkpoint": {"save_top_k": 1},
    "gpu_augmentations": {},
    "loss": None,
    "metrics": None,
    "task_type_overrides": {},
    "num_threads": None,
}


def plain(cfg: Any) -> Any:
    """OmegaConf node -> plain containers (resolved); anything else unchanged."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def trainer_settings(trainer_cfg: Any, task_type: Any) -> dict[str, Any]:
    """The ``trainer`` config for one task type: defaults <- config <- ``task_type_overrides[type]``."""
    task_type = TaskType(getattr(task_type, "value", task_type))
    settings = _merge(DEFAULT_TRAINER, plain(trainer_cfg) or {})
    override = (settings.get("task_type_overrides") or {}).get(task_type.value) or {}
    return _merge(settings, override)


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else MPS, else CPU; other values are used as given."""
    device = str(device or "auto")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def lightning_device_kwargs(device: str | None, lightning_cfg: dict[str, Any]) -> dict[str, Any]:
    """Translate the root ``device`` setting into Trainer ``accelerator`` / ``devices`` unless set there."""
    device = str(device or "auto")
    if device == "auto":
        return {}
    dev = torch.device(device)
    accelerator = {"cuda": "gpu", "cpu": "cpu", "mps": "mps"}.get(dev.type, dev.type)
    devices: Any = [dev.index] if dev.index is not None else 1
    return {"accelerator": accelerator, "devices": devices}


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Use ``num_threads`` intra-op threads inside the block (``None``: leave torch's setting)."""
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def restore_deterministic_flag() -> Iterator[None]:
    """Lightning's ``deterministic=True`` flips a process-wide torch switch; put it back afterwards so
    one training run does not change how later code (attacks, other tests) behaves."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def make_loggers(logging_cfg: Any, out_dir: Path, save_dir: Path, run_name: str) -> list[Any]:
    """TensorBoard and MLflow loggers as configured by the ``logging`` group.

    MLflow tracks to ``logging.mlflow.tracking_uri`` or, by default, ``sqlite:///<out_dir>/mlflow.db``
    with artifacts in ``<out_dir>/mlartifacts`` (a fresh machine needs no server).
    """
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    cfg = plain(logging_cfg) or {}
    loggers: list[Any] = []
    if (cfg.get("tensorboard") or {}).get("enabled", False):
        loggers.append(TensorBoardLogger(save_dir=str(save_dir), name="tensorboard", version=run_name))
    mlflow_cfg = cfg.get("mlflow") or {}
    if mlflow_cfg.get("enabled", False):
        from pandemonium.errors import ConfigError
        from pandemonium.tracking.mlflow_utils import (
            MlflowUnreachableError,
            check_tracking_uri,
            resolve_tracking_uri,
        )

        out_dir.mkdir(parents=True, exist_ok=True)
        try:  # fail before training, not after minutes of it, when the server is down
            uri = check_tracking_uri(resolve_tracking_uri(mlflow_cfg.get("tracking_uri"), out_dir))
        except MlflowUnreachableError as err:
            raise ConfigError(f"logging.mlflow.tracking_uri: {err}") from None
        loggers.append(
            MLFlowLogger(
                experiment_name=str(mlflow_cfg.get("experiment_name") or "pandemonium"),
                run_name=run_name,
                tracking_uri=uri,
                artifact_location=str((out_dir / "mlartifacts").absolute()),
            )
        )
    return loggers


class EpochSummary(Callback):
    """Logs one line per validation (epoch, monitored metric, losses) to the run's log file, which
    is where people look when the progress bar is off or the run went to a cluster."""

    # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the module
    # computes this epoch's accuracy/mAP, so they would pair this epoch's loss with last epoch's metrics
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        shown = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith(("val/", "train/loss"))}
        if trainer.state.fn == "validate":  # fit() re-validates the best checkpoint's weights at the end
            log.info("best weights: %s", {k: v for k, v in shown.items() if k.startswith("val/")})
        else:
            log.info("epoch %d: %s", trainer.current_epoch, shown)


def fit(
    model: nn.Module,
    struct: Any,
    datamodule: Any,
    trainer_cfg: Any = None,
    root_dir: str | Path = ".",
    loggers: list[Any] | None = None,
    device: str | None = "auto",
    seed: int = 0,
    log_every_n_steps: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``datamodule`` with a Lightning Trainer; the best checkpoint's weights end up
    in ``model``. Returns ``{"metrics": val metrics of the best weights, "seconds", "epochs",
    "monitor", "best_checkpoint"}``.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    settings = trainer_settings(trainer_cfg, struct.task_type)
    log.info("task %s: training with %s", getattr(struct, "name", "?"),
             {k: v for k, v in settings.items() if k != "task_type_overrides"})
    module = TaskLightningModule(
        model,
        task_type=struct.task_type,
        num_classes=struct.num_classes,
        loss=settings.get("loss"),
        metrics=settings.get("metrics"),
        optimizer=settings.get("optimizer"),
        lr_schedule=settings.get("lr_schedule"),
        gpu_augmentations=settings.get("gpu_augmentations"),
        seed=seed,
    )
    root_dir = Path(root_dir)
    checkpoint = ModelCheckpoint(
        dirpath=str(root_dir / "checkpoints"),
        filename="best",
        monitor=module.monitor,
        mode=module.monitor_mode,
        save_top_k=int((settings.get("checkpoint") or {}).get("save_top_k", 1)),
        save_last=False,
        enable_version_counter=True,
    )
    callbacks: list[Any] = [checkpoint, EpochSummary()]
    stopping = settings.get("early_stopping") or {}
    if stopping.get("enabled", True):
        callbacks.append(
            EarlyStopping(
                monitor=module.monitor,
                mode=module.monitor_mode,
                patience=int(stopping.get("patience", 8)),
                min_delta=float(stopping.get("min_delta", 0.0)),
                # a victim that reached the accuracy the experiment needs stops there (demo speed)
                stopping_threshold=None if stopping.get("stop_at") is None else float(stopping["stop_at"]),
            )
        )
    trainer_kwargs = dict(settings.get("lightning") or {})
    if trainer_kwargs.get("accelerator", "auto") == "auto":  # an explicit trainer accelerator wins over `device`
        trainer_kwargs.update(lightning_device_kwargs(device, trainer_kwargs))
    if log_every_n_steps:
        trainer_kwargs.setdefault("log_every_n_steps", int(log_every_n_steps))
    if trainer_kwargs.get("deterministic") is True and resolve_device(device).type == "cuda":
        log.info("deterministic=True would fail on CUDA for bilinear upsampling backward; using 'warn'")
        trainer_kwargs["deterministic"] = "warn"
    start = time.perf_counter()
    with (
        restore_deterministic_flag(),
        torch_threads(settings.get("num_threads")),
        warnings.catch_warnings(),
        _lightning_info_silenced(),
    ):
        # Lightning warns that the module's on_after_batch_transfer wins over the datamodule's: that is
        # exactly the intent (Kornia augmentation lives in the module), so the warning is noise here
        warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
        # raised inside Lightning's own pytree helper on newer torch; nothing a user can act on
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        trainer = L.Trainer(
            default_root_dir=str(root_dir),
            callbacks=callbacks,
            logger=loggers if loggers else False,
            enable_model_summary=False,
            **trainer_kwargs,
        )
        model.train()  # callers may hand in a model left in eval mode (e.g. after a quick evaluation)
        trainer.fit(module, datamodule=datamodule)
        seconds = time.perf_counter() - start
        if checkpoint.best_model_path:
            state = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
            module.load_state_dict(state)
        results = trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    # Lightning's max_time ends training wherever the clock is, so two seeded runs can differ:
    # the record says so, and the caller warns
    timer = next((c for c in trainer.callbacks if type(c).__name__ == "Timer"), None)
    stopped_by_time_cap = bool(timer is not None and timer.time_remaining() is not None
                               and timer.time_remaining() <= 0)
    if stopped_by_time_cap:
        log.warning("task %s: training stopped at the wall-clock cap (trainer.lightning.max_time=%s) after %d "
                    "epoch(s); the weights depend on machine speed and are not reproducible bit for bit",
                    getattr(struct, "name", "?"), trainer_kwargs.get("max_time"), int(trainer.current_epoch))
    return {
        "metrics": metrics,
        "seconds": seconds,
        "stopped_by_time_cap": stopped_by_time_cap,
        "epochs": int(trainer.current_epoch),
        "monitor": module.monitor,
        "best_checkpoint": checkpoint.best_model_path or None,
    }


@torch.no_grad()
def run_model(model: nn.Module, loader: Any, task_type: Any, device: str | torch.device = "cpu",
              metrics: Any = None) -> dict[str, Any]:
    """Run ``model`` over ``loader``; per-sample ``preds`` / ``target`` in the :func:`metric_inputs`
    convention (tensors concatenated, detection as lists), ``sample_ids`` and raw ``scores``
    (``TaskTypeSpec.scores``, e.g. class probabilities; ``None`` where ``preds`` says it all)."""
    task_type = TaskType(getattr(task_type, "value", task_type))
    spec = task_type_spec(task_type)
    cfg = metrics_config(task_type, metrics)
    device = torch.device(device)
    model = model.to(device).eval()
    preds_all: list[Any] = []
    target_all: list[Any] = []
    scores_all: list[torch.Tensor] = []
    ids: list[str] = []
    for batch in loader:
        images = batch[Modality.IMAGE.value].to(device)
        outputs = model(images)
        batch = {**batch, Modality.IMAGE.value: images}
        preds, target = metric_inputs(
            task_type, outputs, batch, score_thr=float(cfg.get("score_thr", 0.05)), nms_iou=float(cfg.get("nms_iou", 0.5))
        )
        if spec.scores is not None:
            scores_all.append(spec.scores(outputs).cpu())
        if isinstance(preds, list):
            preds_all += [{k: v.cpu() for k, v in p.items()} for p in preds]
            target_all += [{k: v.cpu() for k, v in t.items()} for t in target]
        else:
            preds_all.append(preds.cpu())
            target_all.append(target.cpu())
        ids += [str(s) for s in batch.get(Modality.SAMPLE_ID.value, [])]
    if preds_all and isinstance(preds_all[0], torch.Tensor):
        preds_all = torch.cat(preds_all)  # type: ignore[assignment]
        target_all = torch.cat(target_all)  # type: ignore[assignment]
    return {
        "preds": preds_all,
        "target": target_all,
        "scores": torch.cat(scores_all) if scores_all else None,
        "sample_ids": ids,
    }
