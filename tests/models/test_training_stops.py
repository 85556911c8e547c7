"""Training stops where the experiment says, and records when the clock (not the data) stopped it."""

from __future__ import annotations

import torch

from pandemonium.models.factory import build_model
from pandemonium.models.training import fit
from pandemonium.tasks.datamodule import TaskDataModule

TINY = {"_target_": "pandemonium.models.factory.task_model", "preset": "tiny"}


def _trainer(**overrides):
    cfg = {
        "lightning": {"max_epochs": 4, "enable_progress_bar": False, "accelerator": "cpu"},
        "optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.005},
        "early_stopping": {"enabled": True, "patience": 10, "stop_at": None},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value}
    return cfg


def test_stop_at_ends_training_once_the_monitor_reaches_it(tiny_structs, tmp_path):
    struct = tiny_structs["shapes_cls"]
    torch.manual_seed(0)
    model = build_model(struct, TINY)
    datamodule = TaskDataModule(struct, batch_size=8, seed=0)
    # any accuracy is >= 0: the first validation already reaches the threshold
    outcome = fit(model, struct, datamodule, _trainer(early_stopping={"stop_at": 0.0}), root_dir=tmp_path, seed=0)
    assert outcome["epochs"] == 1
    assert outcome["stopped_by_time_cap"] is False


def test_wall_clock_cap_is_recorded(tiny_structs, tmp_path):
    struct = tiny_structs["shapes_cls"]
    torch.manual_seed(0)
    model = build_model(struct, TINY)
    datamodule = TaskDataModule(struct, batch_size=8, seed=0)
    # early stopping off: on a fast machine ten epochs without improvement would end training before the clock
    capped = _trainer(lightning={"max_epochs": 1000, "max_time": "00:00:00:01"}, early_stopping={"enabled": False})
    outcome = fit(model, struct, datamodule, capped, root_dir=tmp_path, seed=0)
    assert outcome["stopped_by_time_cap"] is True
    assert outcome["epochs"] < 1000
