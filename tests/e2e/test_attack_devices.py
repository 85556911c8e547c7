"""``pandemonium attack attack.devices=2``: a patch fit on two CPU processes (Lightning Fabric DDP) from
the CLI, inside a mode whose MLflow parent run is active while the processes start."""

from __future__ import annotations

import json

import pytest
import torch

from .conftest import TINY_ATTACK, TINY_TASKS, TINY_TRAIN, check, overrides

pytestmark = pytest.mark.slow


def test_two_process_fit_through_the_attack_mode(cli):
    check(cli("demo", "proj=ddp", "mode.subroutines=[create,train]", "task_list=[shapes_cls]",
              *overrides(TINY_TASKS, TINY_TRAIN)), "demo create+train")
    attack = ("task_list=[shapes_cls]", "proj=ddp", *TINY_ATTACK, "attack.num_eval=16")
    serial = cli("attack", *attack, "attack.devices=2", "attack.strategy=serial")
    check(serial, "attack, 2 devices, serial reference")
    ddp = cli("attack", *attack, "attack.devices=2", "attack.strategy=ddp")
    check(ddp, "attack, 2 devices, ddp")

    patches = sorted((cli.out_dir / "ddp").rglob("PATCHES/shapes_cls/*.pt"), key=lambda p: p.stat().st_mtime)
    assert len(patches) >= 2, patches
    reference, fitted = (torch.load(p, map_location="cpu", weights_only=False) for p in patches[-2:])
    # the same plan, sharded the same way: DDP's all-reduced gradients equal the serial reference's
    torch.testing.assert_close(fitted["patch"], reference["patch"], atol=1e-5, rtol=0)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{cli.out_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddp")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    parents = [r for r in runs if r.data.tags.get("pandemonium.mode") == "attack"]
    assert [p.info.status for p in parents] == ["FINISHED", "FINISHED"]
    newest = max(parents, key=lambda r: r.info.start_time)
    fits = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == newest.info.run_id
            and r.info.run_name == "attack/shapes_cls"]
    assert len(fits) == 1 and fits[0].info.status == "FINISHED"  # rank 0 alone logs the fit
    history = client.get_metric_history(fits[0].info.run_id, "train/total")
    assert history and [m.step for m in history] == sorted({m.step for m in history})  # no step logged twice
    summary = json.loads(next((cli.out_dir / "ddp").rglob("EVAL_SUMMARIES/shapes_cls/*.json")).read_text())
    assert summary["metric"] == "targeted_success"
