"""Multi-device patch fits (Lightning Fabric, 2 CPU processes over gloo): the same patch as the
single-process reference within 1e-5, rank 0 alone logs and checkpoints, and a fit interrupted
mid-way resumes to the same patch as an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pandemonium.attack.checkpoint import load_checkpoint
from pandemonium.attack.training import (
    Callback,
    DistributedFitError,
    EvaluationSettings,
    LambdaCallback,
    PatchTrainer,
    TrainerSettingError,
    default_callbacks,
    rank_zero_only,
    shard_seed,
)

from .toys import PATCH, ToyLoss, toy_pipeline

STEPS = 8
EVERY = 3  # evaluations (and checkpoints) at steps 0, 3, 6, 8
TOLERANCE = 1e-5  # the tolerance PatchTrainer's docstring states
# the same tests run DDP over two GPUs where a machine has them (NCCL), else over two CPU processes (gloo)
ACCELERATOR = "cuda" if torch.cuda.device_count() >= 2 else "cpu"


class RankProbe(Callback):
    """Writes ``<tag>_rank<r>`` at the start of the fit in every process that runs it."""

    def __init__(self, tag: str, only_zero: bool) -> None:
        self.tag, self.rank_zero_only = tag, only_zero

    def on_fit_start(self, trainer: PatchTrainer) -> None:
        rank = dist.get_rank() if dist.is_initialized() else -1
        (trainer.out_dir / f"{self.tag}_rank{rank}").write_text("")


def make_trainer(out_dir: Path, *, devices: int = 2, strategy: str | None = None, mlflow: bool = False,
                 extra: tuple = ()) -> PatchTrainer:
    return PatchTrainer(
        toy_pipeline(seed=3), ToyLoss(), {"target": 1.0, "logit0": 0.1}, patch=(3, PATCH, PATCH), batch_size=8,
        evaluation=EvaluationSettings(num_eval=8, batch_size=8, every=EVERY),
        optimizer={"_target_": "adam", "lr": 0.05}, schedule="cosine", seed=5, out_dir=out_dir,
        callbacks=[*default_callbacks(mlflow=mlflow, progress=False, files=False), *extra],
        devices=devices, accelerator=ACCELERATOR, strategy=strategy,
    )


@pytest.fixture(scope="module")
def ddp_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    probes = (RankProbe("everywhere", only_zero=False), RankProbe("zero", only_zero=True))
    trainer = make_trainer(out, mlflow=True, extra=probes)
    return trainer, trainer.fit(STEPS), out


def test_two_processes_match_the_serial_reference(ddp_fit, tmp_path):
    trainer, ddp, _ = ddp_fit
    serial = make_trainer(tmp_path, strategy="serial").fit(STEPS)
    assert ddp.steps_run == serial.steps_run == STEPS
    diff = float((ddp.patch - serial.patch).abs().max())
    assert diff <= TOLERANCE, diff
    assert [h["total"] for h in ddp.history] == pytest.approx([h["total"] for h in serial.history], abs=1e-5)
    assert ddp.best_step == serial.best_step
    # the patch moved (so the comparison is not trivial), and the parent trainer ends where rank 0 did
    assert float((serial.patch - 0.5).abs().max()) > 0.05
    assert torch.equal(trainer.patch().detach(), ddp.patch) and trainer.step == STEPS
    # a one-stream fit draws other samples: the shards are a different (reproducible) batch
    plain = make_trainer(tmp_path / "plain", devices=1).fit(STEPS)
    assert float((plain.patch - serial.patch).abs().max()) > 1e-3


def test_rank_zero_alone_logs_and_checkpoints(ddp_fit):
    _, result, out = ddp_fit
    assert (out / "everywhere_rank0").exists() and (out / "everywhere_rank1").exists()
    assert (out / "zero_rank0").exists() and not (out / "zero_rank1").exists()
    assert len(list((out / "tensorboard").rglob("events.out.tfevents.*"))) == 1
    import mlflow

    runs = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}").search_experiments()])
    assert [r.info.run_id for r in runs] == [result.run_id]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == STEPS and sorted(ckpt["shards"]["streams"]) == [0, 1]
    assert not rank_zero_only(LambdaCallback()) and rank_zero_only(default_callbacks(mlflow=False)[-1])


def test_interrupted_fit_resumes_to_the_same_patch(ddp_fit, tmp_path):
    _, straight, _ = ddp_fit

    def stop(trainer, step, logs):
        if step == 7:
            raise KeyboardInterrupt("simulated kill at step 7")

    with pytest.raises(DistributedFitError, match="step 7"):
        make_trainer(tmp_path, extra=(LambdaCallback(on_step_end=stop),)).fit(STEPS)
    ckpt = tmp_path / "checkpoints" / "last.pt"
    assert load_checkpoint(ckpt)["step"] == 6
    resumed = make_trainer(tmp_path).fit(STEPS, resume_from=ckpt)
    assert resumed.steps_run == STEPS
    assert float((resumed.patch - straight.patch).abs().max()) <= TOLERANCE
    assert [h["total"] for h in resumed.history] == pytest.approx([h["total"] for h in straight.history], abs=1e-5)
    # and a checkpoint of 2 shards does not resume in one stream
    with pytest.raises(TrainerSettingError, match="2 devices"):
        make_trainer(tmp_path / "one", devices=1).fit(STEPS, resume_from=ckpt)


def test_settings_are_checked_before_any_work(tmp_path):
    with pytest.raises(TrainerSettingError, match=r"batch_size \(8\) must be a multiple of devices \(3\)"):
        make_trainer(tmp_path, devices=3)
    with pytest.raises(TrainerSettingError, match="strategy 'fsdp'"):
        make_trainer(tmp_path, strategy="fsdp")
    assert make_trainer(tmp_path, devices=1).sharding is None  # the plain loop: no Fabric
    assert len({shard_seed(5, k) for k in range(4)}) == 4
