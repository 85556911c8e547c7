"""pandemonium tune: search space checks, pruning hook, the study end to end (slow), multirun grouping."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from pandemonium.modes.steps.search_space import (
    PruningCallback,
    TuneError,
    parse_space,
    space_fingerprint,
    validation_spec,
)
from pandemonium.runs.base import build_scheduler
from pandemonium.testing.fixtures import write_fake_task

optuna = pytest.importorskip("optuna")

LR = {"key": "attack.lr", "type": "float", "low": 0.01, "high": 0.1, "log": True}
TINY = ("model=tiny", "trainer=fast", "trainer.lightning.max_epochs=1", "attack.num_eval=8", "attack.batch_size=4",
        "attack.presets.classification.eval_every=2", "attack.presets.classification.eval_batch_size=8",
        "attack.steps=3",
        "logging.tensorboard.enabled=false", "tune.sampler.n_startup_trials=2")


@pytest.mark.parametrize(("spec", "message"), [
    ({"lr": {**LR, "low": 0.1, "high": 0.01}}, "tune.space.lr: empty or inverted range low=0.1 >= high=0.01"),
    ({"lr": {**LR, "low": 0.1, "high": 0.1}}, "empty or inverted range"),
    ({"lr": {**LR, "low": 0.0}}, "log range needs low > 0"),
    ({"opt": {"key": "attack.lr", "type": "categorical", "choices": []}}, "tune.space.opt: categorical with no choices"),
    ({"lr": {**LR, "type": "normal"}}, "type='normal'"),
    ({"lr": {"type": "float", "low": 0, "high": 1}}, "needs a config `key`"),
    ({}, "tune.space is empty"),
])
def test_bad_search_space_is_refused(spec, message):
    with pytest.raises(TuneError, match=message.replace("(", r"\(").replace(".", r"\.").replace("`", ".")):
        parse_space(spec)


def test_space_keys_must_exist_and_fingerprint_tracks_changes():
    cfg = OmegaConf.create({"attack": {"lr": None, "steps": 10}})
    with pytest.raises(TuneError, match="key='attack.lrr' is not a key"):
        parse_space({"lr": {**LR, "key": "attack.lrr"}}, cfg)
    space = parse_space({"lr": LR, "steps": {"key": "attack.steps", "type": "int", "low": 2, "high": 8}}, cfg)
    assert space["steps"][1].low == 2 and space["lr"][1].log
    wider = parse_space({"lr": {**LR, "high": 0.2}, "steps": {"key": "attack.steps", "type": "int", "low": 2, "high": 8}})
    assert space_fingerprint(space) != space_fingerprint(wider)
    assert space_fingerprint(space) == space_fingerprint(dict(reversed(list(space.items()))))


def test_pruning_callback_stops_a_bad_trial():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    hook = PruningCallback(trial, "targeted_success")

    class Result:
        summary = {"targeted_success": 0.9}

    hook.on_evaluation_end(None, 2, Result())  # above the threshold: the fit goes on
    Result.summary = {"targeted_success": 0.1}
    with pytest.raises(optuna.TrialPruned, match="step 4"):
        hook.on_evaluation_end(None, 4, Result())
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {2: 0.9, 4: 0.1}


def test_trials_evaluate_on_the_validation_fold(compose, pandemonium_roots):
    from pandemonium.attack.spec import AttackSpec

    struct = write_fake_task(pandemonium_roots.data_dir, num_samples=16, size=16)
    cfg = compose("mode=tune", "task_list=[fake_cls]")
    spec = validation_spec(AttackSpec.from_config(cfg.attack, struct), struct, str(cfg.data_dir), 1)
    banks = [s["bank"] for s in spec.stages if "bank" in s]
    assert banks and all(b["eval_split"] == "val" and b["train_split"] == "train" and b["fold"] == 1 for b in banks)


@pytest.mark.slow
def test_tune_study_runs_continues_and_use_best_reruns_attack(compose, pandemonium_roots):
    write_fake_task(pandemonium_roots.data_dir, num_samples=24, size=16)

    def run(*extra):
        scheduler = build_scheduler(compose("mode=tune", "task_list=[fake_cls]", *TINY, *extra))
        return scheduler, scheduler.run()

    first, summary = run("tune.n_trials=3", "tune.study=s1")
    assert summary["n_trials"] == 3 and summary["n_complete"] + summary["n_pruned"] == 3
    assert (first.run_dir / "optuna.db").is_file()
    plots = [p.split("/")[-1] for p in summary["plots"]]
    assert "tune_history.png" in plots and "tune_study.html" in plots
    registry = json.loads((first.proj_path / "studies.json").read_text())
    assert registry["s1"]["storage"] == f"sqlite:///{first.run_dir / 'optuna.db'}"
    # a kill during the last trial: its trial stays RUNNING, its step and the summary are not journaled
    study = optuna.load_study(study_name="s1", storage=registry["s1"]["storage"])
    stale = study.ask()
    stale.set_user_attr("run_dir", str(first.run_dir))
    journal_file = first.run_dir / "steps.jsonl"
    journal_file.write_text("".join(journal_file.read_text().splitlines(keepends=True)[:-2]))
    resumed, summary = run("tune.n_trials=3", "tune.study=s1", f"continue={first.run_dir}")
    assert resumed.run_dir == first.run_dir
    states = [t.state for t in optuna.load_study(study_name="s1", storage=registry["s1"]["storage"]).trials]
    assert states[stale.number] == optuna.trial.TrialState.FAIL and len(states) == 5
    assert summary["n_complete"] + summary["n_pruned"] == 4
    # the same study again: only the missing trial runs, in the first run's storage
    again, summary = run("tune.n_trials=5", "tune.study=s1", "mode.subroutines=[tune,plots]")
    journal = [json.loads(line)["command"] for line in (again.run_dir / "steps.jsonl").read_text().splitlines()]
    assert journal == ["run_trial", "summarize_study"] and summary["n_trials"] == 6  # 4 finished + 1 failed before
    with pytest.raises(TuneError, match="exists in .* with another search space"):
        run("tune.study=s1", "tune.space.lr.high=0.5")
    best = json.loads(next((first.proj_path).rglob("tune_best.json")).read_text())
    attack, headline = run("use_best=s1")
    assert headline and all(0.0 <= v <= 1.0 for v in headline.values())
    stored = json.loads((attack.run_dir / "plan.json").read_text())
    assert stored["mode"] == "attack" and "best_params" in best


def test_multirun_jobs_become_children_of_one_parent_run(compose, pandemonium_roots, monkeypatch, fake_task):
    import mlflow

    from pandemonium.tracking.mode_run import ModeTracking
    from pandemonium.tracking.multirun import OVERRIDES_ENV, PARENT_ENV, MultirunGroup

    monkeypatch.delenv(PARENT_ENV, raising=False)
    monkeypatch.delenv(OVERRIDES_ENV, raising=False)
    cfg = compose("mode=info", "task_list=[fake_cls]", "logging.mlflow.enabled=true")
    sweep = OmegaConf.merge(OmegaConf.to_container(cfg), {"hydra": {"sweep": {"dir": str(pandemonium_roots.out_dir / "sweep")},
                                            "overrides": {"task": ["attack.lr=0.01"]}, "job": {"num": 0}}})
    group = MultirunGroup()
    group.on_multirun_start(sweep)
    group.on_job_start(sweep)
    scheduler = build_scheduler(cfg)
    tracking = ModeTracking.from_scheduler(scheduler)
    tracking.finish()
    group.on_multirun_end(sweep)
    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri)
    child = client.get_run(tracking.run_id)
    assert child.data.tags["mlflow.parentRunId"] == group_parent(client, child)
    assert child.data.tags["override.attack.lr"] == "0.01" and child.data.tags["pandemonium.job"] == "0"
    assert PARENT_ENV not in __import__("os").environ


def group_parent(client, child):
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["pandemonium.multirun"] == "true" and parent.info.status == "FINISHED"
    return parent.info.run_id


def test_a_process_opens_a_storage_once_and_never_reuses_one_of_a_removed_file(tmp_path):
    from pandemonium.modes.tune import open_storage

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = open_storage(url)
    assert open_storage(url, checked=True) is first
    (tmp_path / "optuna.db").unlink()
    again = open_storage(url)
    assert again is not first
    assert (tmp_path / "optuna.db").is_file()
