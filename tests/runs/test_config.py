"""The config tree: defaults, roots, run directories, and the seed's mode config composing."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from pandemonium.cli.main import compose_config
from pandemonium.cli.resolvers import forget_run_dirs

SUPPORT = Path(__file__).parent / "support"


def test_defaults(pandemonium_roots):
    cfg = compose_config([], user_dirs=[])
    assert cfg.mode.id == "info" and cfg.mode.description
    assert list(cfg.task_list) == ["shapes_cls", "shapes_det"]
    assert cfg.proj == "default" and cfg.seed == 42 and cfg.fold == 0 and cfg.device == "auto"
    assert cfg["continue"] is None
    assert cfg.logging.mlflow.enabled and cfg.logging.mlflow.tracking_uri is None and cfg.logging.tensorboard.enabled
    assert cfg.executor._target_.endswith("LocalExecutor")
    assert cfg.reuse.models is None
    for group in ("loaders", "sampling", "augmentations"):
        assert group in cfg
    # roots come from the environment (set by pandemonium_roots)
    assert cfg.data_dir == str(pandemonium_roots.data_dir) and cfg.out_dir == str(pandemonium_roots.out_dir)


def test_roots_default_to_working_directory(pandemonium_roots, monkeypatch):
    monkeypatch.delenv("PANDEMONIUM_DATA")
    monkeypatch.delenv("PANDEMONIUM_RESULTS")
    cfg = compose_config(["data_dir=/somewhere/else"], user_dirs=[])
    assert cfg.out_dir == "./results" and cfg.data_dir == "/somewhere/else"


def test_hydra_settings_and_run_dir(pandemonium_roots):
    forget_run_dirs()
    cfg = compose_config(["proj=p1"], user_dirs=[], return_hydra_config=True)
    assert cfg.hydra.job.chdir is False
    run_dir = Path(cfg.hydra.run.dir)
    assert run_dir.parent == pandemonium_roots.out_dir / "p1" / "runs"
    assert cfg.hydra.run.dir == str(run_dir)  # resolved once per process: stable
    sweep = Path(cfg.hydra.sweep.dir)
    assert sweep.parent == run_dir.parent and sweep.name.endswith("_multirun")
    # continue=latest points hydra's run dir at the newest resumable run
    old = run_dir.parent / "2020-01-01_00-00-00_000000"
    old.mkdir(parents=True)
    (old / "plan.json").write_text("{}")
    forget_run_dirs()
    cont = compose_config(["proj=p1", "continue=latest"], user_dirs=[], return_hydra_config=True)
    assert cont.hydra.run.dir == str(old)


def test_seed_mode_config_overrides_groups_from_the_mode(pandemonium_roots):
    buzz_dir = pandemonium_roots.out_dir.parent / "user_conf"
    (buzz_dir / "mode").mkdir(parents=True)
    (buzz_dir / "mode" / "buzz.yaml").write_text((SUPPORT / "buzz.yaml").read_text())
    cfg = compose_config(["mode=buzz"], user_dirs=[buzz_dir])
    reference = compose_config(["augmentations=no_norm", "sampling=extraction_default"], user_dirs=[])
    default = compose_config([], user_dirs=[])
    assert cfg.mode.id == "BUZZ" and list(cfg.mode.subroutines) == ["a", "b"]
    assert cfg.mode.scheduler._target_ == "foo.bar.BuzzScheduler"
    assert cfg.var_one == 1337 and cfg.var_two == 42
    assert cfg.augmentations == reference.augmentations
    expected_sampling = OmegaConf.merge(reference.sampling, {"sample_num": 1000})
    assert cfg.sampling == expected_sampling and cfg.sampling != default.sampling
    # a command-line override still wins over the mode config
    assert compose_config(["mode=buzz", "sampling.sample_num=5"], user_dirs=[buzz_dir]).sampling.sample_num == 5


def test_a_mode_config_may_set_globals(pandemonium_roots):
    user = pandemonium_roots.out_dir.parent / "user_conf"
    (user / "mode").mkdir(parents=True)
    (user / "mode" / "globals.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /tasks: builtin\nmode:\n  id: globals\n"
        "  scheduler: {_target_: x.Y}\nseed: 7\nfold: 2\n")
    cfg = compose_config(["mode=globals"], user_dirs=[user])
    assert (cfg.seed, cfg.fold, len(cfg.task_list)) == (7, 2, 4)
    assert compose_config(["mode=globals", "seed=3"], user_dirs=[user]).seed == 3  # the command line still wins


def test_user_folder_comes_first(pandemonium_roots):
    user = pandemonium_roots.out_dir.parent / "user_conf"
    (user / "tasks").mkdir(parents=True)
    (user / "tasks" / "demo.yaml").write_text("# @package _global_\ntask_list: [digits]\n")
    assert list(compose_config([], user_dirs=[user]).task_list) == ["digits"]
