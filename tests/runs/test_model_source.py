"""ModelSource reuses a stored victim only when it was trained under the same config (fingerprint)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from pandemonium.modes.steps import models as model_steps
from pandemonium.modes.steps.models import FINGERPRINT_KEY, ModelSource, training_fingerprint


@pytest.fixture(scope="module")
def struct(tmp_path_factory):
    from pandemonium.tasks.creators import create_task, load_task_struct

    data_dir = tmp_path_factory.mktemp("model_source_data")
    create_task("shapes_cls", data_dir, seed=0, num_samples=24, image_size=32)
    return load_task_struct("shapes_cls", data_dir)


def _cfg(**trainer):
    return OmegaConf.create({
        "seed": 0, "fold": 0,
        "model": {"preset": "tiny"},
        "sampling": {"batch_size": 8, "num_workers": 0},
        "trainer": {"lightning": {"max_epochs": 3, "enable_progress_bar": True}, **trainer,
                    "task_type_overrides": {"detection": {"early_stopping": {"stop_at": 0.5}}}},
    })


def _source(cfg, tmp_path):
    from pandemonium.runs.file_manager import FileManager

    fm = FileManager(tmp_path / "proj", tmp_path / "proj" / "runs" / "r1")
    return ModelSource(SimpleNamespace(cfg=cfg, fm=fm, run_dir=fm.run_path, tracking=None, fold=0))


def _store(struct, source, fingerprint):
    from pandemonium.models.factory import build_model
    from pandemonium.models.storage import save_model_artifact

    model = build_model(struct, OmegaConf.to_container(source.ctx.cfg.model))
    return save_model_artifact(model, struct, source.ctx.cfg.model, fm=source.ctx.fm,
                               extra={} if fingerprint is None else {FINGERPRINT_KEY: fingerprint})


def test_fingerprint_follows_what_changes_the_model_and_ignores_what_does_not(struct):
    base = training_fingerprint(struct, _cfg())
    assert base == training_fingerprint(struct, _cfg())
    # how training is shown, and other task types' overrides, do not make another model
    assert base == training_fingerprint(struct, _cfg(num_threads=1))
    quiet = _cfg()
    quiet.trainer.lightning.enable_progress_bar = False
    assert base == training_fingerprint(struct, quiet)
    # epochs, stopping, model and the task's own override do
    assert base != training_fingerprint(struct, _cfg(early_stopping={"stop_at": 0.97}))
    longer = _cfg()
    longer.trainer.lightning.max_epochs = 4
    assert base != training_fingerprint(struct, longer)
    other_model = _cfg()
    other_model.model.preset = "small"
    assert base != training_fingerprint(struct, other_model)
    own_override = _cfg()
    own_override.trainer.task_type_overrides["classification"] = {"lightning": {"max_epochs": 9}}
    assert base != training_fingerprint(struct, own_override)


def test_ensure_reuses_a_matching_model_and_trains_anew_when_the_config_changed(struct, tmp_path, monkeypatch):
    struct.paths.pop("models", None)
    trained: list[str] = []

    def fake_train(s, datamodule, cfg, fm, run_dir, seed, parent_run_id=None):
        path = _store(s, _source(cfg, tmp_path), training_fingerprint(s, cfg))
        trained.append(str(path))
        return {"path": str(path), "seconds": 0.0}

    monkeypatch.setattr(model_steps, "train_task", fake_train)
    source = _source(_cfg(), tmp_path)
    wrong = _store(struct, source, "0000000000000000")  # a model of another config: not a victim to reuse

    first = source.ensure(struct, lambda s: None, seed=0)
    assert first["trained"] and len(trained) == 1 and first["model"] != str(wrong)

    struct.paths.pop("models")  # the next run: nothing attached, the project holds both models
    again = _source(_cfg(), tmp_path).ensure(struct, lambda s: None, seed=1)
    assert again == {"model": first["model"], "trained": False} and len(trained) == 1

    struct.paths.pop("models")
    changed = _source(_cfg(early_stopping={"stop_at": 0.9}), tmp_path).ensure(struct, lambda s: None, seed=0)
    assert changed["trained"] and len(trained) == 2 and changed["model"] not in (first["model"], str(wrong))


def test_a_broken_artifact_is_skipped_not_fatal(struct, tmp_path):
    struct.paths.pop("models", None)
    source = _source(_cfg(), tmp_path)
    good = _store(struct, source, training_fingerprint(struct, source.ctx.cfg))
    broken = source.ctx.fm.construct_saving_path(obj=None, key="models", task_name=struct.name)
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a torch file")
    assert source.matching(struct) == good


def test_a_model_brought_along_is_used_as_it_is(struct, tmp_path):
    """An adopted model has no training recipe to compare: it is the victim, not retrained."""
    struct.paths.pop("models", None)
    source = _source(_cfg(), tmp_path)
    trained_elsewhere = _store(struct, source, "0000000000000000")
    adopted = _store(struct, source, None)
    assert source.matching(struct) == adopted != trained_elsewhere
