"""Each bad input of issue 13 exits 2 with one line naming the culprit and leaves the results folder as it was."""

from __future__ import annotations

import tempfile

import pytest

from pandemonium.cli.main import main

# (overrides after `attack`, text the error line must contain)
BAD_INPUTS = {
    "unknown added key": (["+attack.stepz=5"], "'stepz'"),
    "unknown key": (["attack.stepz=5"], "attack.stepz"),
    "unknown top-level key": (["+seeed=1"], "'seeed'"),
    "trainer typo": (["trainer=fastt"], "'fast'"),
    "model typo": (["model=smal"], "'small'"),
    "unknown attack preset": (["attack=nosuchpreset"], "classification_targeted"),
    "negative steps": (["attack.steps=-3"], "attack.steps"),
    "zero steps": (["attack.steps=0"], "attack.steps"),
    "steps as text": (["attack.steps=many"], "attack.steps"),
    "lr as text": (["attack.lr=fast"], "attack.lr"),
    "lr nan": (["attack.lr=nan"], "attack.lr"),
    "lr inf": (["attack.lr=inf"], "attack.lr"),
    "negative lr": (["attack.lr=-0.1"], "attack.lr"),
    "patch fraction above 1": (["attack.patch_fraction=1.5"], "attack.patch_fraction"),
    "preset steps": (["attack=classification_targeted", "attack.steps=0"], "attack.steps"),
    "negative target class": (["attack.presets.classification.target_class=-1"], "target_class"),
    "seed as text": (["seed=abc"], "seed"),
    "seed as float": (["seed=1.5"], "seed"),
    "negative fold": (["fold=-1"], "fold"),
    "unknown device": (["device=tpu"], "device"),
    "task_list without brackets": (["task_list=digits"], "task_list=[digits]"),
    "task with separator": (["task_list=[a/b]"], "'a/b'"),
    "project escaping out_dir": (["proj=../../escape"], "proj"),
    "project with separator": (["proj=a/b"], "proj"),
    "hidden project": (["proj=.hidden"], "proj"),
    "continue without runs": (["continue=latest"], "continue=latest"),
    "continue of an unknown run": (["continue=2001-01-01_00-00-00"], "continue=2001"),
    "unparsable override": (["task_list=[a,"], "task_list=[a,"),
    "bad sweep value": (["-m", "seed=1,abc"], "seed"),
}


@pytest.fixture
def finished(pandemonium_roots):
    """A finished result in the default project that no failed call may touch."""
    path = pandemonium_roots.out_dir / "default" / "MODELS" / "fake_cls" / "models_0001.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"model")
    return path


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_exits_2_naming_the_culprit_and_writes_nothing(case, pandemonium_roots, finished, snapshot,
                                                                  capsys):
    overrides, culprit = BAD_INPUTS[case]
    before = snapshot(pandemonium_roots.out_dir)
    assert main(["attack", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pandemonium: error:"), err
    assert culprit in err[0]
    assert "Traceback" not in err[0]
    assert snapshot(pandemonium_roots.out_dir) == before


def test_device_cuda_without_gpu(pandemonium_roots, monkeypatch, capsys, snapshot):
    import pandemonium.cli.schema as schema

    monkeypatch.setattr(schema, "_cuda_count", lambda: 0)
    before = snapshot(pandemonium_roots.out_dir)
    assert main(["attack", "device=cuda"]) == 2
    assert "device=cuda: this machine has no CUDA GPU" in capsys.readouterr().err
    monkeypatch.setattr(schema, "_cuda_count", lambda: 1)
    assert main(["attack", "device=cuda:1"]) == 2
    assert "1 CUDA device(s)" in capsys.readouterr().err
    assert snapshot(pandemonium_roots.out_dir) == before


def test_out_dir_not_writable_or_not_a_folder(pandemonium_roots, tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["attack", f"out_dir={a_file}/results"]) == 2
    assert f"{a_file} is not a folder" in capsys.readouterr().err
    # read-only: simulated, since root may write anywhere
    locked = tmp_path / "locked"
    locked.mkdir()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert main(["attack", f"out_dir={locked}"]) == 2
    assert f"{locked} is not writable" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_failed_call_creates_no_project_and_escapes_nothing(pandemonium_roots, tmp_path, capsys):
    out = tmp_path / "fresh_results"
    assert main(["attack", f"out_dir={out}", "proj=new_proj", "trainer=fastt"]) == 2
    assert main(["attack", f"out_dir={out}", "proj=../../escape"]) == 2
    assert not out.exists() and not (tmp_path.parent / "escape").exists()


def test_errors_found_while_starting_leave_no_run_folder(fake_task, pandemonium_roots, snapshot, capsys):
    """Problems only the mode can see (a task not created, a target class the task lacks) are refused
    before any step, and the run folder Hydra made for them is removed."""
    before = snapshot(pandemonium_roots.out_dir)
    assert main(["attack", "task_list=[no_such_task]"]) == 2
    assert "'no_such_task'" in capsys.readouterr().err
    assert main(["attack", f"task_list=[{fake_task.name}]", "attack.presets.classification.target_class=99"]) == 2
    assert "target_class 99" in capsys.readouterr().err
    assert snapshot(pandemonium_roots.out_dir) == before


def test_info_and_cfg_flags_run_nothing(pandemonium_roots, capsys, snapshot):
    before = snapshot(pandemonium_roots.out_dir)
    assert main(["attack", "--info"]) == 0
    assert main(["attack", "--cfg", "job"]) == 0
    assert "steps" in capsys.readouterr().out
    assert snapshot(pandemonium_roots.out_dir) == before


def test_attack_devices_below_one_is_refused_before_work(tmp_path):
    from pandemonium.cli.main import main

    code = main(["attack", "attack.devices=0", f"out_dir={tmp_path / 'out'}", f"data_dir={tmp_path / 'data'}"])
    assert code == 2
    assert not (tmp_path / "out").exists()
