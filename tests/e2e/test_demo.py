"""End to end through the CLI: the reduced demo, its report in Chromium, MLflow runs, continue.

Everything runs with tiny tasks (64 samples of 32 px), tiny models (1 epoch) and a few patch
steps, so the numbers are not the demo's quality figures; the checks are about the job working:
every artifact is stored and attached, the report shows exactly the stored numbers, the runs are
tracked, and an attack killed mid-way finishes with `continue` without redoing finished tasks.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from pandemonium.report.html import extract_numbers, format_number
from report.chromium import dump_dom  # tests/report (pytest puts tests/ on sys.path)

from .conftest import TINY_ATTACK, TINY_EVAL, TINY_TASKS, TINY_TRAIN, check, overrides

pytestmark = pytest.mark.slow

ATTACK_KEYS = ("models", "patches", "pipelines", "curves", "patch_checkpoints", "eval_tables", "eval_summaries",
               "examples")


def _structs(run_dir: Path) -> dict:
    from pandemonium.runs.base import decode_paths

    return decode_paths(json.loads((run_dir / "structs.json").read_text()))


def _same(shown: str, stored: float) -> bool:
    if stored is None or (isinstance(stored, float) and math.isnan(stored)):
        return shown == "nan"
    return abs(float(shown) - float(stored)) <= 5e-4 or shown == format_number(stored)


@pytest.fixture(scope="module")
def demo(cli):
    proc = cli("demo", "proj=e2e", *overrides(TINY_TASKS, TINY_TRAIN, TINY_ATTACK, TINY_EVAL), timeout=900)
    check(proc, "reduced demo")
    return proc, cli.runs("e2e")[-1]


def test_demo_stores_and_attaches_every_artifact(demo):
    proc, run_dir = demo
    structs = _structs(run_dir)
    assert set(structs) == {"shapes_cls", "shapes_det"}
    for task, paths in structs.items():
        for key in (*ATTACK_KEYS, "transfer", "robustness_scale", "robustness_angle", "reports"):
            assert key in paths, (task, key, sorted(paths))
            assert Path(paths[key]).is_file() and Path(paths[key]).stat().st_size > 0, (task, key)
        patch = torch.load(paths["patches"], weights_only=False)
        assert patch["format"] == "pandemonium-patch" and patch["tasks"] == [task]
        assert patch["patch"].shape[0] == 3 and 0 <= float(patch["patch"].min()) <= float(patch["patch"].max()) <= 1
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["command"] for s in steps] == ["train_model"] * 2 + ["attack_task"] * 2 + ["evaluate_patch"] * 2 + [
        "transfer", "robustness", "report"]


def test_demo_prints_where_everything_is(demo):
    proc, run_dir = demo
    out = proc.stdout
    structs = _structs(run_dir)
    assert f"report      : {structs['shapes_cls']['reports']}" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out and "mlflow.db" in out
    assert "tensorboard --logdir" in out
    for task, metric in (("shapes_cls", "targeted_success"), ("shapes_det", "object_vanished")):
        summary = json.loads(Path(structs[task]["eval_summaries"]).read_text())
        assert summary["metric"] == metric
        line = next(line for line in out.splitlines() if line.strip().startswith(task))
        assert metric in line and (f"{summary['rate']:.3f}" in line if summary["rate"] is not None else "nan" in line)


def test_pipeline_yaml_rebuilds_the_attack_pipeline(demo):
    from omegaconf import OmegaConf

    from pandemonium.attack.pipeline import Pipeline
    from pandemonium.models.storage import load_model_artifact

    _, run_dir = demo
    paths = _structs(run_dir)["shapes_cls"]
    config = OmegaConf.to_container(OmegaConf.load(paths["pipelines"]))["shapes_cls"]
    model, _ = load_model_artifact(config["stages"][-1]["model"]["artifact"])
    pipe = Pipeline.from_config(config, model=model)
    patch = torch.load(paths["patches"], weights_only=False)["patch"]
    y, kwargs = pipe(patch[None].expand(4, -1, -1, -1), evaluate=True)
    assert y.shape == (4, 5) and "targets" in kwargs


def test_report_renders_and_shows_the_stored_numbers(demo):
    _, run_dir = demo
    structs = _structs(run_dir)
    report = Path(structs["shapes_cls"]["reports"])
    tables, headline = extract_numbers(dump_dom(report))

    transfer = pd.read_csv(structs["shapes_cls"]["transfer"])
    assert len(transfer) == 4  # 2 patches x 2 models
    shown = tables["transfer"]
    assert len(shown) == 4
    for row in transfer.itertuples():
        cells = shown[f"{row.patch_id}/{row.model_id}"]
        for col in ("rate", "ci_low", "ci_high"):
            assert _same(cells[col], getattr(row, col)), (row.patch_id, row.model_id, col, cells[col])
        assert int(cells["n"]) == row.n

    for condition in ("scale", "angle"):
        curve = pd.read_csv(structs["shapes_cls"][f"robustness_{condition}"])
        shown = tables[f"robustness/{condition}"]
        assert len(shown) == len(curve) == 2 * 2  # diagonal pairs x 2 values
        for row in curve.itertuples():
            assert _same(shown[f"{row.patch_id}/{row.model_id}/{getattr(row, condition)}"]["rate"], row.rate)

    for task in ("shapes_cls", "shapes_det"):
        summary = json.loads(Path(structs[task]["eval_summaries"]).read_text())
        metric = summary["metric"]
        assert _same(headline[f"{task}/{metric}"], summary["rate"])
        evaluation = tables[f"{task}/evaluation"]
        rows = {cells["quantity"]: cells for cells in evaluation.values()}
        for quantity in (metric, "total_patch", "total_control"):
            if quantity in summary:
                assert _same(rows[quantity]["mean"], summary[quantity]), (task, quantity)
                assert _same(rows[quantity]["ci_low"], summary[f"{quantity}_ci_low"]), (task, quantity)
        area = tables[f"{task}/metrics"]["patch area / image area"]["value"]
        assert _same(area, summary["patch_area_fraction"])

    page = report.read_text()
    assert page.count("data:image/png;base64,") >= 2 * 3 + 3  # patch, examples, curves per task; heat map; 2 curves
    assert "pandemonium" in page and "demo" in page and "attack:" in page  # command and composed config


def test_mlflow_has_one_parent_run_with_tagged_children(demo, cli):
    import mlflow

    _, run_dir = demo
    structs = _structs(run_dir)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{cli.out_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("pandemonium.mode") == "demo"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    by_name = {r.info.run_name: r for r in children}
    for task in ("shapes_cls", "shapes_det"):
        summary = json.loads(Path(structs[task]["eval_summaries"]).read_text())
        assert by_name[f"train_{task}_fold0"].data.tags["model_id"] == summary["model_id"]  # adopted
        for name in (f"attack/{task}", f"evaluate/{task}"):
            tags = by_name[name].data.tags
            assert tags["task"] == task, name
            assert tags["model_id"] == summary["model_id"] and tags["patch_id"] == summary["patch_id"], name


def test_evaluate_and_report_modes_reproduce_the_demo_figures(demo, cli):
    """The standalone modes on the demo's project: same seed, same fixed conditions, same numbers."""
    _, run_dir = demo
    demo_transfer = pd.read_csv(_structs(run_dir)["shapes_cls"]["transfer"])
    # the demo's settings: its fixed conditions and its classification target ("star")
    sweeps = [o for o in TINY_EVAL if not o.startswith("mode.num_examples")]
    proc = cli("evaluate", "proj=e2e", "logging.mlflow.enabled=false", "attack.presets.classification.target_class=3",
               *sweeps)
    check(proc, "evaluate mode")
    eval_run = cli.runs("e2e")[-1]
    structs = _structs(eval_run)
    transfer = pd.read_csv(structs["shapes_cls"]["transfer"])
    assert structs["shapes_cls"]["transfer"] != _structs(run_dir)["shapes_cls"]["transfer"]  # a new file
    pd.testing.assert_frame_equal(transfer, demo_transfer)

    proc = cli("report", "proj=e2e", "logging.mlflow.enabled=false")
    check(proc, "report mode")
    report = Path(_structs(cli.runs("e2e")[-1])["shapes_cls"]["reports"])
    assert report.name == "report_0001.html" and f"report: {report}" in proc.stdout
    tables, _ = extract_numbers(dump_dom(report))
    for row in transfer.itertuples():
        assert _same(tables["transfer"][f"{row.patch_id}/{row.model_id}"]["rate"], row.rate)
    assert "pandemonium report" in report.read_text() and "proj=e2e" in report.read_text()


def _wait_for(predicate, timeout: float, proc) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.2)
    return False


def test_killed_attack_finishes_with_continue_without_redoing_finished_tasks(cli, demo, tmp_path):
    # models come from the demo's project; shapes_det's fit is long enough to be killed in the middle
    args = ("proj=e2e_continue", "reuse.models=e2e", "mode.subroutines=[attack,evaluate]", *TINY_ATTACK,
            "attack.presets.detection.steps=40", "attack.presets.detection.eval_every=2",
            "logging.mlflow.enabled=false")
    # the process pauses after shapes_det's first patch checkpoint and says so (a marker file): the kill
    # lands there however loaded the machine is, never after the fit ended
    marker, log = tmp_path / "paused", tmp_path / "first.log"
    runner = Path(__file__).parents[1] / "validation" / "support" / "kill_points.py"
    with open(log, "w") as handle:
        proc = subprocess.Popen([sys.executable, str(runner), "fit=attack/shapes_det", str(marker),
                                 *cli.command("attack", *args)[3:]], stdout=handle, stderr=subprocess.STDOUT,
                                env=cli.env(), cwd=cli.out_dir.parent)
    runs_root = cli.out_dir / "e2e_continue"
    ckpt = runs_root / "PATCH_CHECKPOINTS" / "shapes_det" / "fit" / "checkpoints" / "last.pt"
    try:
        assert _wait_for(marker.is_file, 900, proc), log.read_text()[-3000:]
        assert ckpt.is_file() and proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    run_dir = cli.runs("e2e_continue")[-1]
    finished = [json.loads(line)["command"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert finished == ["attack_task"], finished  # shapes_cls done, shapes_det interrupted
    cls_patches = sorted((runs_root / "PATCHES" / "shapes_cls").glob("*.pt"))
    assert len(cls_patches) == 1

    resumed = cli("attack", *args, "continue=latest", timeout=900)
    check(resumed, "continue")
    records = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3]  # every step exactly once
    assert sorted((runs_root / "PATCHES" / "shapes_cls").glob("*.pt")) == cls_patches  # not redone
    assert len(list((runs_root / "PATCHES" / "shapes_det").glob("*.pt"))) == 1
    assert "resumed from" in (run_dir / "pandemonium.log").read_text()  # the det fit resumed its checkpoint
    structs = _structs(run_dir)
    for task in ("shapes_cls", "shapes_det"):
        for key in ATTACK_KEYS:
            assert Path(structs[task][key]).is_file(), (task, key)
    assert structs["shapes_cls"]["patches"] == cls_patches[0]


def test_universal_patch_and_evaluate_only_on_reused_patches(cli, demo):
    args = ("reuse.models=e2e", *TINY_ATTACK, "attack.patch_fraction=0.05", "logging.mlflow.enabled=false")
    proc = cli("attack", "proj=e2e_universal", "mode.universal=true", "mode.subroutines=[attack,evaluate]", *args)
    check(proc, "universal attack")
    run_dir = cli.runs("e2e_universal")[-1]
    structs = _structs(run_dir)
    patch_path = structs["shapes_cls"]["patches"]
    assert patch_path == structs["shapes_det"]["patches"] and patch_path.parent.name == "universal"
    payload = torch.load(patch_path, weights_only=False)
    assert payload["universal"] and payload["tasks"] == ["shapes_cls", "shapes_det"]
    for task in ("shapes_cls", "shapes_det"):
        assert json.loads(Path(structs[task]["eval_summaries"]).read_text())["patch_id"] == "universal/patch"

    # evaluate only, on the patches of another project
    proc = cli("attack", "proj=e2e_reeval", "reuse.patches=e2e", "mode.subroutines=[evaluate]", *args)
    check(proc, "evaluate-only attack on reused patches")
    structs = _structs(cli.runs("e2e_reeval")[-1])
    assert structs["shapes_cls"]["patches"].parts[-4] == "e2e"
    assert not (cli.out_dir / "e2e_reeval" / "PATCHES").exists()


def _cli_figures(out: str, task: str) -> dict[str, tuple[float, float, float]]:
    """The demo's printed figures of one task: label -> (value, ci_low, ci_high)."""
    import re

    number = r"(-?[0-9.]+|nan)"
    figure = re.compile(rf"{number} \[{number}, {number}\]")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(task))
    found = {"patched": tuple(float(v) for v in figure.search(lines[start]).groups())}
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        match = figure.search(line)
        if match:
            found[line[: match.start()].strip()] = tuple(float(v) for v in match.groups())
    return found


def test_cli_report_and_mlflow_tell_one_story(demo, cli):
    """Each task's patched, control and random-patch rates and the paired difference, with their
    intervals: the same in the printed summary, the report's headline cards and the MLflow run."""
    import mlflow

    from pandemonium.modes.steps.evaluate_patch import headline_figures
    from pandemonium.tracking.mode_run import mlflow_name

    proc, run_dir = demo
    structs = _structs(run_dir)
    _, headline = extract_numbers(dump_dom(Path(structs["shapes_cls"]["reports"])))
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{cli.out_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("e2e").experiment_id], max_results=200)
    for task in ("shapes_cls", "shapes_det"):
        summary = json.loads(Path(structs[task]["eval_summaries"]).read_text())
        assert summary["split"] == "test" and summary["n_scenes"] <= summary["n_rows"]
        # the best patch was chosen on the validation split, the figures come from the test split
        assert torch.load(structs[task]["patches"], weights_only=False)["summary"]["selection_split"] == "val"
        figures = headline_figures(summary)
        assert [f.label for f in figures] == ["patched", "control (no patch)", "random patch", "patched - random"]
        printed = _cli_figures(proc.stdout, task)
        logged = next(r for r in runs if r.info.run_name == f"evaluate/{task}").data
        assert logged.tags["split"] == "test" and logged.tags["env.seed"] == str(summary["environment"]["seed"])
        for f in figures:
            stored = (f.value, f.ci_low, f.ci_high)
            shown = tuple(headline[f"{task}/{f.key}{part}"] for part in ("", "/ci_low", "/ci_high"))
            # an undefined figure (nothing to attack: a tiny detector that finds nothing) is NaN, which
            # MLflow does not store: it must then be absent there, not some other number
            in_mlflow = tuple(logged.metrics.get(mlflow_name(f"{f.key}{part}"), math.nan)
                              for part in ("", "_ci_low", "_ci_high"))
            for name, got in (("cli", printed[f.label]), ("report", shown), ("mlflow", in_mlflow)):
                assert all(_same(str(g), s) for g, s in zip(got, stored)), (task, f.label, name, got, stored)


def test_transfer_diagonal_is_the_stored_evaluation(demo):
    """A patch on its own model: the transfer matrix holds exactly the stored evaluation's value,
    interval, baselines and counts (one value and one interval per patch x model x metric)."""
    _, run_dir = demo
    structs = _structs(run_dir)
    transfer = pd.read_csv(structs["shapes_cls"]["transfer"])
    for task in ("shapes_cls", "shapes_det"):
        summary = json.loads(Path(structs[task]["eval_summaries"]).read_text())
        row = transfer[(transfer.patch_id == summary["patch_id"]) & (transfer.model_id == summary["model_id"])]
        assert len(row) == 1, task
        row = row.iloc[0]
        metric = summary["metric"]
        for column, key in (("rate", metric), ("ci_low", f"{metric}_ci_low"), ("ci_high", f"{metric}_ci_high"),
                            ("control", f"{metric}_control"), ("random", f"{metric}_random"),
                            ("diff_vs_random", f"{metric}_diff_vs_random"), ("n_scenes", f"{metric}_n_scenes")):
            assert _same(str(row[column]), summary[key]), (task, column, row[column], summary[key])
