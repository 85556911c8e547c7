"""PatchTrainer on a tiny classifier: the loss goes down, evaluation is fixed, bad input is caught."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pandemonium.attack.checkpoint import get_rng_state, load_checkpoint
from pandemonium.attack.training import (
    EvaluationSettings,
    LambdaCallback,
    NonFiniteLossError,
    PatchTrainer,
    default_callbacks,
)

from .toys import PATCH, ToyLoss, toy_pipeline


def ev(**overrides):
    """The tests' evaluation settings: 16 samples in batches of 8, every 4 steps, target class 0."""
    return EvaluationSettings(**{"num_eval": 16, "batch_size": 8, "every": 4, "target_class": 0, **overrides})


def quiet(**overrides):
    """The default callbacks without MLflow, TensorBoard and the progress bar (unless overridden)."""
    return default_callbacks(**{"mlflow": False, "tensorboard": False, "progress": False, **overrides})


def make_trainer(tmp_path, **overrides):
    kwargs = dict(
        pipeline=toy_pipeline(seed=3), loss=ToyLoss(), weights={"target": 1.0}, patch=(3, PATCH, PATCH),
        batch_size=8, evaluation=ev(), optimizer={"_target_": "adam", "lr": 0.2}, seed=1,
        out_dir=tmp_path / "fit", callbacks=quiet(),
    )
    kwargs.update(overrides)
    return PatchTrainer(**kwargs)


def test_fit_lowers_the_loss_and_keeps_the_best_patch(tmp_path):
    trainer = make_trainer(tmp_path)
    result = trainer.fit(12)
    totals = [e["total_patch"] for e in result.evals]
    assert [e["step"] for e in result.evals] == [0, 4, 8, 12]
    assert totals[-1] < totals[0] - 1e-3, totals
    assert np.mean([h["target"] for h in result.history[-3:]]) < np.mean([h["target"] for h in result.history[:3]])
    assert result.best_step == [0, 4, 8, 12][int(np.argmin(totals))]
    assert result.best_metric == pytest.approx(min(totals))
    ckpt = load_checkpoint(result.checkpoint_path)
    best = trainer.patch.__class__(torch.zeros(3, PATCH, PATCH))
    best.load_state_dict(ckpt["callbacks"]["BestPatch"]["best_state"])
    assert torch.equal(best().detach(), result.best_patch)
    assert result.patch.min() >= 0 and result.patch.max() <= 1  # projection after every step
    assert result.eval_table_path.exists()


def test_fixed_evaluation_is_identical_twice_and_leaves_training_rng_alone(tmp_path):
    trainer = make_trainer(tmp_path)
    before = get_rng_state(trainer.pipeline)
    grad_modes = []
    hook = trainer.pipeline.stages[-1].register_forward_hook(lambda *a: grad_modes.append(torch.is_grad_enabled()))
    first = trainer.evaluate(step=0)
    hook.remove()
    assert grad_modes and not any(grad_modes)  # evaluation runs under torch.no_grad()
    second = trainer.evaluate(step=0)
    pd.testing.assert_frame_equal(first.table, second.table)
    assert first.summary == second.summary
    after = get_rng_state(trainer.pipeline)
    assert all(torch.equal(before["generators"][k], after["generators"][k]) for k in before["generators"])
    # every sample has the three views of every term and the sampled params beside them
    cols = set(first.table.columns)
    assert {"target_patch", "target_control", "target_delta", "untargeted_success", "targeted_success"} <= cols
    assert any(c.startswith("param:0_ToyImplant/") for c in cols)
    assert len(first.table) == 16
    delta = first.table["target_patch"] - first.table["target_control"]
    assert np.allclose(delta, first.table["target_delta"])


def test_unknown_weight_lists_the_available_terms(tmp_path):
    with pytest.raises(ValueError, match=r"\['nps'\].*available terms: \['logit0', 'target', 'untargeted'\]"):
        make_trainer(tmp_path, weights={"target": 1.0, "nps": 0.1})


def test_bad_optimizer_or_schedule_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match="unknown optimizer 'adamw'; known optimizers"):
        make_trainer(tmp_path, optimizer="adamw")
    with pytest.raises(ValueError, match="schedule 'exponential' got unknown settings \\['T_max'\\]"):
        make_trainer(tmp_path, schedule={"name": "exponential", "T_max": 3})


def test_loss_returning_a_scalar_is_rejected(tmp_path):
    def scalar_loss(logits, **kwargs):
        return {"target": logits.sum()}

    with pytest.raises(ValueError, match=r"term 'target' has shape \(\); expected per-sample shape \(B,\)"):
        make_trainer(tmp_path, loss=scalar_loss)


class PoisonableLoss(ToyLoss):
    poison = False

    def __call__(self, logits, **kwargs):
        terms = super().__call__(logits, **kwargs)
        if self.poison:
            terms["untargeted"] = terms["untargeted"] * float("inf")
        return terms


class Recorder:
    """A duck-typed callback (no base class); records which hooks were called."""

    def __init__(self):
        self.calls = []

    def on_fit_start(self, trainer):
        self.calls.append("fit_start")

    def on_step_end(self, trainer, step, logs):
        self.calls.append(f"step{step}")

    def on_evaluation_end(self, trainer, step, result):
        self.calls.append(f"eval{step}")

    def on_exception(self, trainer, error):
        self.calls.append(type(error).__name__)


def test_nan_loss_stops_with_term_and_step_and_keeps_the_checkpoint(tmp_path):
    loss = PoisonableLoss()

    def poison_at_6(trainer, step, logs):
        if step == 6:
            loss.poison = True

    recorder = Recorder()
    trainer = make_trainer(tmp_path, loss=loss, callbacks=[*quiet(), LambdaCallback(on_step_end=poison_at_6), recorder])
    with pytest.raises(NonFiniteLossError, match=r"loss term 'untargeted' became infinite at step 7"):
        trainer.fit(12)
    assert recorder.calls == ["fit_start", "eval0", "step1", "step2", "step3", "step4", "eval4", "step5", "step6",
                              "NonFiniteLossError"]
    ckpt = load_checkpoint(trainer.checkpoint_path)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["patch"].values())


def test_early_stopping_and_unknown_metric(tmp_path):
    trainer = make_trainer(tmp_path, callbacks=quiet(best_metric="total_patch", best_mode="max",
                                                     early_stopping={"patience": 1}),
                           schedule={"name": "plateau", "mode": "max", "patience": 0, "factor": 0.5})
    result = trainer.fit(40)
    assert result.stopped_early and result.steps_run == 8
    # the plateau schedule watches the same (non-improving) metric: halved after the evaluation at step 4
    assert [h["lr"] for h in result.history] == [0.2] * 4 + [0.1] * 4
    bad = make_trainer(tmp_path, out_dir=tmp_path / "bad", callbacks=quiet(early_stopping={"metric": "success", "mode": "max"}))
    with pytest.raises(KeyError, match="'success' is not produced by the evaluation; available metrics: .*untargeted_success"):
        bad.fit(4)


def test_sharpness_aware_step_replays_the_same_conditions(tmp_path):
    trainer = make_trainer(tmp_path, sharpness_aware=0.05, optimizer={"_target_": "nifgsm", "lr": 0.05},
                           schedule={"name": "warmup", "warmup_steps": 2, "after": "cosine"},
                           grad_accumulation=2, batch_size=4)
    pipe = trainer.pipeline
    calls = []
    original = pipe.forward

    def spy(x, control=False, evaluate=False, params=None, **kwargs):
        out = original(x, control=control, evaluate=evaluate, params=params, **kwargs)
        calls.append((evaluate, params, pipe.get_last_sample_as_dict()))
        return out

    pipe.forward = spy
    trainer.fit(1)
    train_calls = [c for c in calls if not c[0]]
    assert len(train_calls) == 4  # two micro-batches, each replayed once at the perturbed patch
    for (_, p_first, drawn), (_, replay, _) in zip(train_calls[:2], train_calls[2:]):
        assert p_first is None and replay is not None
        assert replay.keys() == drawn.keys()
        assert all(np.array_equal(replay[k], drawn[k]) for k in drawn)
    assert train_calls[0][2]["0_ToyImplant/image"].tolist() != train_calls[1][2]["0_ToyImplant/image"].tolist() or \
        train_calls[0][2]["0_ToyImplant/offset_0"].tolist() != train_calls[1][2]["0_ToyImplant/offset_0"].tolist()


def test_several_patches_train_evaluate_and_rerender(tmp_path):
    from pandemonium.attack.evaluation import load_table
    from pandemonium.attack.pipeline import Pipeline
    from pandemonium.attack.rows import render_row

    from .toys import ToyBrightness, ToyImplant, ToyMerge, toy_model

    pipe = Pipeline(ToyMerge(), ToyImplant(), ToyBrightness(), toy_model(), seed=0)
    trainer = make_trainer(tmp_path, pipeline=pipe, patch={"a": (3, PATCH, PATCH), "b": torch.rand(3, PATCH, PATCH)})
    result = trainer.fit(4)
    assert set(result.patch) == {"a", "b"} and set(result.best_patch) == {"a", "b"}
    assert not torch.equal(result.patch["a"], torch.full((3, PATCH, PATCH), 0.5))
    assert (tmp_path / "fit" / "patch_last_a.png").is_file()
    row = load_table(result.eval_table_path).iloc[3]
    image = render_row(pipe, {k: v for k, v in result.patch.items()}, row)
    assert image.shape == (1, 3, 16, 16)


def test_a_fit_depends_on_the_seed_not_on_earlier_use_of_the_pipeline(tmp_path):
    used = toy_pipeline(seed=3)
    for _ in range(3):  # advances every stage's generator
        used(torch.rand(8, 3, PATCH, PATCH))
    a = make_trainer(tmp_path / "a", pipeline=used).fit(3)
    b = make_trainer(tmp_path / "b", pipeline=toy_pipeline(seed=3)).fit(3)
    c = make_trainer(tmp_path / "c", pipeline=toy_pipeline(seed=3), seed=2).fit(3)
    assert torch.equal(a.patch, b.patch)
    assert not torch.equal(a.patch, c.patch)


def test_fit_steps_are_exactly_the_hand_written_loop(tmp_path):
    """No hidden randomness or extra arithmetic: fit == forward, weighted loss, backward, Adam, clamp."""
    import copy

    from pandemonium.attack.losses import weighted_total
    from pandemonium.attack.training import TensorPatch

    pipe = toy_pipeline(seed=4)
    bare_pipe = copy.deepcopy(pipe)
    result = make_trainer(tmp_path, pipeline=pipe, seed=4, weights={"target": 1.0, "logit0": 0.5}).fit(5)

    bare_pipe.set_seed(4)
    patch = TensorPatch(torch.full((3, PATCH, PATCH), 0.5))
    opt = torch.optim.Adam(patch.parameters(), lr=0.2)
    for _ in range(5):
        opt.zero_grad()
        y, kw = bare_pipe(patch().unsqueeze(0).expand(8, -1, -1, -1))
        weighted_total(ToyLoss()(y, **kw), {"target": 1.0, "logit0": 0.5}).backward()
        opt.step()
        patch.project_()
    assert torch.equal(result.patch, patch().detach())


def test_finished_fit_is_not_overwritten_and_auto_resume_continues_it(tmp_path):
    first = make_trainer(tmp_path, evaluation=ev(every=2)).fit(2)
    with pytest.raises(FileExistsError, match="already holds a fit \\(last.pt at step 2\\); pass resume_from='auto'"):
        make_trainer(tmp_path, evaluation=ev(every=2)).fit(4)
    assert load_checkpoint(first.checkpoint_path)["step"] == 2  # untouched by the refused fit
    continued = make_trainer(tmp_path, evaluation=ev(every=2)).fit(4, resume_from="auto")
    assert continued.steps_run == 4 and len(continued.history) == 4
    assert continued.history[:2] == first.history
    fresh = make_trainer(tmp_path, evaluation=ev(every=2)).fit(2, overwrite=True)
    assert fresh.history == first.history
