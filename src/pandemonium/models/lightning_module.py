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
import os
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MetricCollection

from pandemonium.errors import ConfigError
from pandemonium.models.metrics import metric_inputs
from pandemonium.tasks.attributes import KORNIA_VALID_MODALITIES, Modality, TaskType

BUILTIN_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_search_path() -> list[Path]:
    """Config folders, first match wins: ``PANDEMONIUM_CONFIGS_PATH`` (user copy), then the built-in tree."""
    paths = []
    user = os.environ.get("PANDEMONIUM_CONFIGS_PATH")
    if user:
        paths += [Path(p).expanduser() for p in user.split(os.pathsep) if p]
    return [*paths, BUILTIN_CONFIGS]


def load_group_config(group: str, name: str) -> dict[str, Any]:
    """``<configs>/<group>/<name>.yaml`` as a plain dict; :class:`ConfigError` names group and name."""
    for root in config_search_path():
        path = root / group / f"{name}.yaml"
        if path.is_file():
            try:
                data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
            except Exception as err:
                raise ConfigError(f"configs/{group}/{name}.yaml ({path}) is malformed: {err}") from None
            return dict(data or {})
    raise ConfigError(f"no config {group}/{name}.yaml in {[str(p) for p in config_search_path()]}")


class _Routes(MutableMapping):
    """Task type -> ``{"loss", "metrics"}`` config names.

    Entries set in code (``CONFIGS_ROUTES[my_type] = {...}``, e.g. by a plugin that registers a task
    type) win; everything else is read through from ``configs/{loss,metrics}/defaults.yaml`` (user
    config folder first), so editing those files needs no code.
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
        loss = load_group_config("loss", "defaults")
        metrics = load_group_config("metrics", "defaults")
        if task_type.value not in loss or task_type.value not in metrics:
            raise ConfigError(
                f"task type {task_type.value!r} has no entry in configs/loss/defaults.yaml or "
                "configs/metrics/defaults.yaml; add one naming its loss and metrics configs"
            )
        return {"loss": str(loss[task_type.value]), "metrics": str(metrics[task_type.value])}

    def __setitem__(self, task_type: Any, route: Mapping[str, str]) -> None:
        if set(route) != {"loss", "metrics"}:
            raise ConfigError(f"CONFIGS_ROUTES entry must have exactly the keys 'loss' and 'metrics', got {dict(route)}")
        self._registered[self._key(task_type)] = {"loss": str(route["loss"]), "metrics": str(route["metrics"])}

    def __delitem__(self, task_type: Any) -> None:
        del self._registered[self._key(task_type)]

    def __iter__(self):
        listed = load_group_config("loss", "defaults")
        return iter([t for t in TaskType if t in self._registered or t.value in listed])

    def __len__(self) -> int:
        return len(list(iter(self)))


#: TaskType -> {"loss": <name in configs/loss>, "metrics": <name in configs/metrics>}
CONFIGS_ROUTES: MutableMapping[Any, dict[str, str]] = _Routes()


def _import(target: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as err:
        raise ConfigError(f"_target_ {target!r} does not import ({err})") from None


def instantiate_with(spec: Mapping[str, Any], what: str, **optional: Any) -> Any:
    """Call ``spec["_target_"]`` with the other keys, adding ``optional`` kwargs the callable accepts."""
    spec = dict(spec)
    if "_target_" not in spec:
        raise ConfigError(f"{what}: config {spec} has no _target_")
    target = _import(str(spec.pop("_target_")))
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        params = {}
    for key, value in optional.items():
        if key in params and key not in spec:
            spec[key] = value
    try:
        return target(**spec)
    except Exception as err:
        raise ConfigError(f"{what}: {getattr(target, '__name__', target)}(**{spec}) failed: {err}") from None


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
            modalities in ``KORNIA_VALID_MODALITIES`` follow the geometry, the rest pass unchanged.
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


def apply_kornia(augmentation: nn.Module, batch: dict) -> dict:
    """Apply a Kornia ``AugmentationSequential`` to the Kornia-valid modalities of a collated batch.

    Images and masks go through as tensors; boxes (a list of ``(N_i, 4)`` tensors) are padded to one
    tensor for Kornia and cut back afterwards, clipped to the image, and boxes that left the image
    are dropped together with their labels.
    """
    image_key = Modality.IMAGE.value
    inputs: list[torch.Tensor] = [batch[image_key]]
    keys = [KORNIA_VALID_MODALITIES[Modality.IMAGE]]
    has_mask = Modality.MASK.value in batch and Modality.MASK in KORNIA_VALID_MODALITIES
    has_boxes = Modality.BOXES.value in batch and Modality.BOXES in KORNIA_VALID_MODALITIES
    if has_mask:
        mask = batch[Modality.MASK.value]
        inputs.append(mask.unsqueeze(1).float())
        keys.append(KORNIA_VALID_MODALITIES[Modality.MASK])
    counts: list[int] = []
    if has_boxes:
        boxes = batch[Modality.BOXES.value]
        counts = [len(b) for b in boxes]
        padded = torch.zeros(len(boxes), max(max(counts, default=0), 1), 4, device=inputs[0].device)
        for i, b in enumerate(boxes):
            padded[i, : len(b)] = b
        inputs.append(padded)
        keys.append(KORNIA_VALID_MODALITIES[Modality.BOXES])
    out = augmentation(*inputs, data_keys=keys)
    out = out if isinstance(out, list | tuple) else [out]
    result = dict(batch)
    result[image_key] = out[0].clamp(0, 1)
    idx = 1
    if has_mask:
        result[Modality.MASK.value] = out[idx].squeeze(1).round().long()
        idx += 1
    if has_boxes:
        h, w = result[image_key].shape[-2:]
        new_boxes, new_labels = [], []
        labels = batch.get("labels") or [torch.zeros(c, dtype=torch.long) for c in counts]
        for i, c in enumerate(counts):
            b = out[idx][i, :c].clone()
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            keep = ((b[:, 2] - b[:, 0]) > 1) & ((b[:, 3] - b[:, 1]) > 1)
            new_boxes.append(b[keep])
            new_labels.append(labels[i][keep.to(labels[i].device)])
        result[Modality.BOXES.value] = new_boxes
        result["labels"] = new_labels
    return result
