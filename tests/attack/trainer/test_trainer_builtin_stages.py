"""The trainer with the built-in stages and losses: a fit runs, and evaluation rows re-render exactly."""

from __future__ import annotations

import pytest
import torch

from pandemonium.attack.evaluation import load_table
from pandemonium.attack.losses import ClassificationUntargeted, CompositeLoss, TotalVariation
from pandemonium.attack.patches import SigmoidPatch
from pandemonium.attack.pipeline import Pipeline
from pandemonium.attack.rows import final_stage_input, render_row
from pandemonium.attack.stages.augment import KorniaAugment
from pandemonium.attack.stages.fused import FusedImplantAugment
from pandemonium.attack.stages.implant import RectangleImplanter
from pandemonium.attack.training import EvaluationSettings, LambdaCallback, PatchTrainer, default_callbacks

from .toys import toy_model


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    path = tmp_path_factory.mktemp("bank") / "bank.pt"
    g = torch.Generator().manual_seed(0)
    torch.save({"images": torch.rand(16, 3, 32, 32, generator=g), "class": torch.randint(0, 3, (16,), generator=g)},
               path)
    return str(path)


def _stages(kind, bank):
    if kind == "fused":
        return [FusedImplantAugment(bank, scale=[0.3, 0.5], degrees=15, translate=0.1, brightness=0.1, contrast=0.1)]
    return [RectangleImplanter(bank, scale=[0.3, 0.5]),
            KorniaAugment({"ColorJiggle": {"brightness": 0.1, "p": 0.5}, "RandomAffine": {"degrees": 10, "p": 1.0}})]


@pytest.mark.parametrize("kind", ["fused", "kornia"])
def test_builtin_pipeline_fit_and_exact_rerender(kind, bank, tmp_path):
    pipe = Pipeline(*_stages(kind, bank), toy_model(), seed=0)
    loss = CompositeLoss([ClassificationUntargeted(), TotalVariation()])
    trainer = PatchTrainer(pipe, loss, {"untargeted": 1.0, "tv": 0.1}, patch=SigmoidPatch((3, 8, 8)), batch_size=8,
                           evaluation=EvaluationSettings(num_eval=12, batch_size=5, every=3), out_dir=tmp_path,
                           callbacks=default_callbacks(mlflow=False, progress=False),
                           optimizer={"_target_": "adam", "lr": 0.1})
    result = trainer.fit(3)
    assert set(trainer.term_names) == {"untargeted", "tv"}
    assert [e["step"] for e in result.evals] == [0, 3]
    table = load_table(result.eval_table_path)
    assert {"untargeted_success", "tv_delta", "total_delta"} <= set(table.columns)
    patch = trainer.patch().detach()
    for i in range(len(table)):
        row = table.iloc[i]
        b, j = int(row["eval_batch"]), int(row["row_in_batch"])
        n = trainer.evaluation.batch_sizes[b]
        with torch.no_grad():
            batch = final_stage_input(pipe, patch.expand(n, *patch.shape), evaluate=True,
                                      params=trainer.evaluation.conditions[b])
        assert torch.equal(render_row(pipe, patch, row)[0], batch[j]), f"row {i}"


@pytest.mark.parametrize("kind", ["fused", "kornia"])
def test_builtin_pipeline_resumes_bit_for_bit(kind, bank, tmp_path):
    import shutil

    def make(out, *extra):
        pipe = Pipeline(*_stages(kind, bank), toy_model(), seed=5)
        return PatchTrainer(pipe, CompositeLoss([ClassificationUntargeted(), TotalVariation()]),
                            {"untargeted": 1.0, "tv": 0.1}, patch=SigmoidPatch((3, 8, 8)), batch_size=4,
                            evaluation=EvaluationSettings(num_eval=4, every=2), out_dir=out,
                            callbacks=[*default_callbacks(mlflow=False, tensorboard=False, progress=False), *extra],
                            optimizer={"_target_": "mifgsm", "lr": 0.05})

    def keep_step_2(trainer, path):
        if trainer.step == 2:
            shutil.copy(path, tmp_path / "step2.pt")

    straight = make(tmp_path / "a", LambdaCallback(on_checkpoint_saved=keep_step_2)).fit(5)
    resumed = make(tmp_path / "b").fit(5, resume_from=tmp_path / "step2.pt")
    assert torch.equal(resumed.patch, straight.patch)
    assert [h["total"] for h in resumed.history] == [h["total"] for h in straight.history]
