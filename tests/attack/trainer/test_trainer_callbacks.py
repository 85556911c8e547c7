"""Callbacks: an interrupted fit resumes with every callback's state, config building, ordering."""

from __future__ import annotations

import pytest
import torch

from pandemonium.attack.training import (
    BestPatch,
    Callback,
    Checkpoint,
    EarlyStopping,
    LambdaCallback,
    PatchTrainer,
    TrainerSettingError,
    default_callbacks,
)
from pandemonium.build import BuildError

from .test_trainer_fit import ev, make_trainer
from .toys import PATCH, ToyLoss, toy_pipeline


class StepCounter(Callback):
    """A user's stateful callback: counts steps and sums the logged totals."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.steps, self.total = 0, 0.0

    def state_dict(self):
        return {"steps": self.steps, "total": self.total}

    def load_state_dict(self, state):
        self.steps, self.total = state["steps"], state["total"]

    def on_step_end(self, trainer, step, logs):
        self.steps += 1
        self.total += logs["total"]


class Interrupt(RuntimeError):
    pass


def _callbacks(*extra):
    # best patch on a metric that improves, early stopping on one that does not: both states move
    return [BestPatch("total_patch", "min"), EarlyStopping("total_patch", mode="max", patience=50),
            StepCounter(), Checkpoint(), *extra]


def test_interrupted_fit_resumes_every_callback_bit_for_bit(tmp_path):
    def stop_at_5(trainer, step, logs):
        if step == 5:
            raise Interrupt("stop")

    interrupted = make_trainer(tmp_path / "a", evaluation=ev(every=2),
                               callbacks=_callbacks(LambdaCallback(on_step_end=stop_at_5)))
    with pytest.raises(Interrupt):
        interrupted.fit(8)
    resumed_trainer = make_trainer(tmp_path / "a", evaluation=ev(every=2), callbacks=_callbacks())
    resumed = resumed_trainer.fit(8, resume_from="auto")
    straight_trainer = make_trainer(tmp_path / "b", evaluation=ev(every=2), callbacks=_callbacks())
    straight = straight_trainer.fit(8)

    assert torch.equal(resumed.patch, straight.patch)
    assert torch.equal(resumed.best_patch, straight.best_patch)
    assert resumed.best_step == straight.best_step and resumed.best_metric == straight.best_metric
    assert resumed.history == straight.history and resumed.evals == straight.evals
    for kind in (EarlyStopping, StepCounter):
        assert resumed_trainer.callback(kind).state_dict() == straight_trainer.callback(kind).state_dict()
    # the states really moved, so the equalities are not trivial
    assert straight_trainer.callback(EarlyStopping).bad_evals >= 2
    assert straight_trainer.callback(StepCounter).steps == 8
    assert straight.best_step not in (None, 0)


def test_checkpoint_runs_last_and_sees_state_updated_in_the_same_evaluation(tmp_path):
    seen = []
    watcher = LambdaCallback(on_checkpoint_saved=lambda trainer, path: seen.append(
        torch.load(path, weights_only=False)["callbacks"]["EarlyStopping"]["bad_evals"]))
    trainer = make_trainer(tmp_path, evaluation=ev(every=2),
                           callbacks=[Checkpoint(), watcher, EarlyStopping("total_patch", mode="max", patience=50)])
    assert isinstance(trainer.callbacks[-1], Checkpoint)
    trainer.fit(4)
    assert seen == [0, 1, 2]  # evaluations at 0, 2, 4: the early-stopping count written is already the new one


def test_from_config_builds_callbacks_and_rejects_unknown_keys(tmp_path):
    common = dict(pipeline=toy_pipeline(seed=3), loss=ToyLoss(), weights={"target": 1.0})
    trainer = PatchTrainer.from_config(**common, config={
        "patch": [3, PATCH, PATCH], "batch_size": 4, "out_dir": str(tmp_path), "optimizer": {"name": "mifgsm", "lr": 0.1},
        "evaluation": {"num_eval": 8, "every": 3},
        "callbacks": {"best_metric": "untargeted_success", "best_mode": "max", "mlflow": False,
                      "tensorboard": False, "progress": False, "early_stopping": {"patience": 2}}})
    assert [type(c).__name__ for c in trainer.callbacks] == [
        "BestPatch", "EarlyStopping", "PatchFiles", "Plots", "Checkpoint"]
    assert trainer.callback(EarlyStopping).metric == "untargeted_success"
    assert type(trainer.optimizer).__name__ == "MIFGSM" and trainer.settings.every == 3
    listed = PatchTrainer.from_config(**common, config={"callbacks": [
        {"_target_": "BestPatch", "metric": "target_patch"}, {"_target_": "Checkpoint", "filename": "x.pt"}]},
        patch=(3, PATCH, PATCH), out_dir=tmp_path)
    assert listed.checkpoint_path == tmp_path / "checkpoints" / "x.pt"
    with pytest.raises(TrainerSettingError, match=r"unknown keys \['eval_every'\]; known keys"):
        PatchTrainer.from_config(**common, config={"eval_every": 3})
    with pytest.raises(BuildError, match="unknown _target_ 'BestPatches'; did you mean BestPatch"):
        PatchTrainer.from_config(**common, config={"callbacks": [{"_target_": "BestPatches"}]})


def test_callback_settings_are_checked():
    with pytest.raises(ValueError, match="EarlyStopping: mode must be 'min' or 'max', got 'up'"):
        EarlyStopping("x", mode="up")
    with pytest.raises(ValueError, match=r"LambdaCallback: unknown hooks \['on_step'\]"):
        LambdaCallback(on_step=print)
    names = [type(c).__name__ for c in default_callbacks(early_stopping={"patience": 1})]
    assert names == ["BestPatch", "EarlyStopping", "PatchFiles", "Plots", "MLflowLogger", "TensorBoardLogger",
                     "ProgressBar", "Checkpoint"]
