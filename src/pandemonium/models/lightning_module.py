"""Training of one task model with Lightning: loss and metrics routed by task type, Kornia GPU augmentation.

``CONFIGS_ROUTES`` maps every :class:`~pandemonium.tasks.attributes.TaskType` to the config names in
``configs/loss`` and ``configs/metrics`` (each folder's ``defaults.yaml`` holds the mapping, so a new
task type is one new entry there plus its yaml files)::

    CONFIGS_ROUTES[TaskType.DETECTION] == {"loss": "centernet", "metrics": "detection"}

>>> module = TaskLightningModule(model, task_type="classification", num_classes=4)  # doctest: +SKIP
>>> lightning.Trainer(max_epochs=1).fit(module, datamodule=dm)                       # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MetricCollection

from pandemonium.build import import_target, instantiate
from pandemonium.errors import ConfigError
from pandemonium.models.metrics import metric_inputs
from pandemonium.plugins import BUILTIN_CONFIGS, config_search_path, load_group_config, merged_group_config
from pandemonium.tasks.attributes import Modality, TaskType
from pandemonium.tasks.geometry import apply_kornia
from pandemonium.tasktypes import task_type_spec

__all__ = [
    "BUILTIN_CONFIGS",
    "CONFIGS_ROUTES",
    "TaskLightningModule",
    "apply_kornia",
    "build_gpu_augmentation",
    "build_loss",
    "build_metrics",
    "config_search_path",
    "instantiate_with",
    "load_group_config",
    "metrics_config",
]

class _Routes(MutableMapping):
    """Task type -> ``{"loss", "metrics"}`` config names.

    Entries set in code (``CONFIGS_ROUTES[my_type] = {...}``) win, then entries of
    ``configs/{loss,metrics}/defaults.yaml`` (user folder, built-in tree and plugin folders, merged), then
    the task type's own ``TaskTypeSpec.loss`` / ``TaskTypeSpec.metrics``.
    """

    def __init__(self) -> None:
        self._registered: dict[Any, dict[str, str]] = {}

    @staticmethod
    def _key(task_type: Any) -> TaskType:
        return TaskType(getattr(task_type, "value", task_type))

    def __getitem__(self, task_type: Any) -> dict[str, str]:
        task_type = self._key(task_type)
        if task_type in self._registered:
            return dict(self._registered[task_type])
        spec = task_type_spec(task_type)
        loss = merged_group_config("loss", "defaults").get(task_type.value) or spec.loss
        metrics = merged_group_config("metrics", "defaults").get(task_type.value) or spec.metrics
        if not loss or not metrics:
            raise ConfigError(
                f"task type {task_type.value!r} names no training loss or metrics: set TaskTypeSpec.loss and "
                ".metrics, or add an entry to configs/loss/defaults.yaml and configs/metrics/defaults.yaml"
            )
        return {"loss": str(loss), "metrics": str(metrics)}

    def __setitem__(self, task_type: Any, route: Mapping[str, str]) -> None:
        if set(route) != {"loss", "metrics"}:
            raise ConfigError(f"CONFIGS_ROUTES entry must have exactly the keys 'loss' and 'metrics', got {dict(route)}")
        self._registered[self._key(task_type)] = {"loss": str(route["loss"]), "metrics": str(route["metrics"])}

    def __delitem__(self, task_type: Any) -> None:
        del self._registered[self._key(task_type)]

    def __iter__(self):
        listed = merged_group_config("loss", "defaults")
        return iter([t for t in TaskType
                     if t in self._registered or t.value in listed or task_type_spec(t).loss is not None])

    def __len__(self) -> int:
        return len(list(iter(self)))


#: TaskType -> {"loss": <name in configs/loss>, "metrics": <name in configs/metrics>}
CONFIGS_ROUTES: MutableMapping[Any, dict[str, str]] = _Routes()


def instantiate_with(spec: Mapping[str, Any], what: str, **optional: Any) -> Any:
    """Call ``spec["_target_"]`` with the other keys, adding the ``optional`` kwargs its signature names.

    Only explicitly named parameters get them: torchmetrics classes take ``**kwargs`` and refuse
    unknown ones further down.
    """
    plain = dict(_container(spec) or {})
    if "_target_" not in plain:
        raise ConfigError(f"{what}: config {plain} has no _target_")
    target = import_target(str(plain["_target_"]), what=what)
    try:
        named = set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        named = set()
    return instantiate(plain, what=what, optional={k: v for k, v in optional.items() if k in named})


def _container(cfg: Any) -> Any:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def build_loss(task_type: Any, spec: Mapping[str, Any] | str | None = None) -> nn.Module:
    """The loss of ``task_type``: ``spec`` (a config dict or a name in ``configs/loss``) or the routed one."""
    task_type = TaskType(getattr(task_type, "value", task_type))
    spec = _container(spec)
    if spec is None or isinstance(spec, str):
        spec = load_group_config("loss", spec or CONFIGS_ROUTES[task_type]["loss"])
    return instantiate_with(spec, f"loss of task type {task_type.value!r}")


def metrics_config(task_type: Any, spec: Mapping[str, Any] | str | None = None) -> dict[str, Any]:
    """The metrics config (``metrics``, ``monitor``, ``mode``, …) of ``task_type``."""
    task_type = TaskType(getattr(task_type, "value", task_type))
    spec = _container(spec)
    if spec is None or isinstance(spec, str):
        spec = load_group_config("metrics", spec or CONFIGS_ROUTES[task_type]["metrics"])
    spec = dict(spec)
    if not spec.get("metrics"):
        raise ConfigError(f"metrics config of task type {task_type.value!r} lists no metrics")
    if spec.get("monitor") not in spec["metrics"]:
        raise ConfigError(f"metrics config of task type {task_type.value!r}: monitor {spec.get('monitor')!r} is not one of {list(spec['metrics'])}")
    return spec


def build_metrics(task_type: Any, num_classes: int, spec: Mapping[str, Any] | str | None = None) -> MetricCollection:
    """A torchmetrics ``MetricCollection`` from the metrics config of ``task_type``."""
    cfg = metrics_config(task_type, spec)
    metrics = {
        name: instantiate_with(m, f"metric {name!r}", num_classes=num_classes, num_labels=num_classes)
        for name, m in cfg["metrics"].items()
    }
    return MetricCollection(metrics)


def build_gpu_augmentation(specs: Sequence[Mapping[str, Any]] | None) -> nn.Module | None:
    """Kornia augmentations (``_target_`` + kwargs each) as one ``kornia.augmentation.AugmentationSequential``."""
    specs = _container(specs) or []
    if isinstance(specs, Mapping):  # allow a name -> spec mapping, which is easier to override from the CLI
        specs = list(specs.values())
    if not specs:
        return None
    import kornia.augmentation as K

    augs = [instantiate_with(s, "gpu augmentation") for s in specs]
    return K.AugmentationSequential(*augs, data_keys=None)


class TaskLightningModule(L.LightningModule):
    """Trains and validates one model of one task type.

    Args:
        model: the ``nn.Module`` (images in [0, 1] in, task-type outputs out).
        task_type: a :class:`TaskType` (or its value).
        num_classes: classes of the task (for metrics).
        loss: a loss config / name in ``configs/loss`` / ``nn.Module``; ``None`` follows ``CONFIGS_ROUTES``.
        metrics: a metrics config / name in ``configs/metrics``; ``None`` follows ``CONFIGS_ROUTES``.
        optimizer: ``_target_`` + kwargs of a ``torch.optim`` optimiser.
        lr_schedule: ``"onecycle"``, ``"cosine"`` or ``None``.
        gpu_augmentations: Kornia augmentation configs applied to training batches on the device; only
            every modality moves by its :class:`~pandemonium.tasks.attributes.Geometry`.
        seed: seeds the augmentation draws (together with the step), independent of global RNG state.
    """

    def __init__(
        self,
        model: nn.Module,
        task_type: Any,
        num_classes: int,
        loss: Any = None,
        metrics: Any = None,
        optimizer: Mapping[str, Any] | None = None,
        lr_schedule: str | None = "onecycle",
        gpu_augmentations: Sequence[Mapping[str, Any]] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.model = model
        self.task_type = TaskType(getattr(task_type, "value", task_type))
        self.num_classes = int(num_classes)
        self.loss_fn = loss if isinstance(loss, nn.Module) else build_loss(self.task_type, loss)
        self.metrics_cfg = metrics_config(self.task_type, metrics)
        base = build_metrics(self.task_type, self.num_classes, self.metrics_cfg)
        self.val_metrics = base.clone(prefix="val/")
        self.test_metrics = base.clone(prefix="test/")
        self.optimizer_cfg = dict(_container(optimizer) or {"_target_": "torch.optim.AdamW", "lr": 3e-3, "weight_decay": 1e-4})
        if lr_schedule not in (None, "onecycle", "cosine"):
            raise ConfigError(f"lr_schedule must be 'onecycle', 'cosine' or null, got {lr_schedule!r}")
        self.lr_schedule = lr_schedule
        self.gpu_augmentation = build_gpu_augmentation(gpu_augmentations)
        self.seed = int(seed)
        self.save_hyperparameters(ignore=["model", "loss"])

    @property
    def monitor(self) -> str:
        """Logged name of the metric that checkpointing and early stopping watch (``val/<name>``)."""
        return f"val/{self.metrics_cfg['monitor']}"

    @property
    def monitor_mode(self) -> str:
        return str(self.metrics_cfg.get("mode", "max"))

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(x)

    # -- augmentation on the device ------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if self.gpu_augmentation is None or self.trainer is None or not self.trainer.training:
            return batch
        # Kornia samples from the global torch RNG; a forked RNG seeded from (seed, step) keeps the
        # draws reproducible and leaves everybody else's random state untouched.
        step_seed = int(np.random.SeedSequence([self.seed, int(self.global_step)]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed)
            return apply_kornia(self.gpu_augmentation, batch)

    # -- steps -------------------------------------------------------------------------------------
    def _shared_step(self, batch: dict) -> tuple[Any, dict[str, torch.Tensor]]:
        outputs = self.model(batch[Modality.IMAGE.value])
        losses = self.loss_fn(outputs, batch)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{self.task_type.value} loss is {loss.item()} at step {self.global_step}; lower the learning "
                "rate (trainer.optimizer.lr) or check the task's targets"
            )
        return outputs, losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        _, losses = self._shared_step(batch)
        bs = batch[Modality.IMAGE.value].shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        for k, v in losses.items():
            if k != "loss":
                self.log(f"train/{k}", v, batch_size=bs)
        return losses["loss"]

    def _eval_step(self, batch: dict, stage: str, metrics: MetricCollection) -> None:
        outputs, losses = self._shared_step(batch)
        preds, target = metric_inputs(
            self.task_type, outputs, batch,
            score_thr=float(self.metrics_cfg.get("score_thr", 0.05)), nms_iou=float(self.metrics_cfg.get("nms_iou", 0.5)),
        )
        metrics.update(preds, target)
        self.log(f"{stage}/loss", losses["loss"], prog_bar=True, batch_size=batch[Modality.IMAGE.value].shape[0])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def configure_optimizers(self) -> Any:
        optimizer = instantiate_with({**self.optimizer_cfg, "params": self.model.parameters()}, "optimizer")
        if self.lr_schedule is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        if total < 10:  # OneCycleLR's warm-up phase needs a few steps (it divides by its length)
            return optimizer
        if self.lr_schedule == "onecycle":
            lr = [g["lr"] for g in optimizer.param_groups]
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.2)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
