"""A lean FixedEvaluation (one rate, the random baseline only: what transfer and robustness read) gives
exactly the figures of the full evaluation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pandemonium import Pipeline
from pandemonium.attack import ClassificationTargeted, CompositeLoss, FusedImplantAugment, TotalVariation
from pandemonium.attack import evaluation as evaluation_module
from pandemonium.attack.evaluation import FixedEvaluation
from pandemonium.modes.steps.transfer import figures_record


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lean") / "scenes.pt"
    torch.save({"images": torch.rand(48, 3, 32, 32), "class": torch.randint(0, 4, (48,))}, path)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    return Pipeline(FusedImplantAugment(str(path), scale=(0.3, 0.4), degrees=10, brightness=0.1), model, seed=0)


def _evaluation(pipeline, **kwargs):
    loss = CompositeLoss([ClassificationTargeted(target_class=2), TotalVariation()])
    return FixedEvaluation(pipeline, loss, {}, num_eval=12, batch_size=8, seed=3, target_class=2,
                           task_type="classification", **kwargs)


def test_lean_summary_equals_the_full_one_where_it_reports(pipeline):
    patch = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(1))
    full = _evaluation(pipeline).run(patch)
    lean = _evaluation(pipeline, baseline_arms=("random",), rates=("targeted_success",)).run(patch)
    assert lean.summary, "the lean evaluation summarised nothing"
    for key, value in lean.summary.items():
        assert key in full.summary, key
        assert value == full.summary[key] or (math.isnan(value) and math.isnan(full.summary[key])), key
    assert not any("grey" in k for k in lean.summary) and any("grey" in k for k in full.summary)
    assert not any(k.startswith(("targeted_", "tv_")) and "success" not in k for k in lean.summary)
    assert figures_record(lean.summary, "targeted_success") == figures_record(full.summary, "targeted_success")
    assert "targeted_success_grey_hits" not in lean.table and "targeted_success_random_hits" in lean.table


def test_unknown_baseline_arm_is_refused(pipeline):
    with pytest.raises(ValueError, match="black"):
        _evaluation(pipeline, baseline_arms=("random", "black"))


def test_drawing_the_conditions_does_not_run_the_model(pipeline, monkeypatch):
    calls = []
    handle = pipeline.stages[-1].register_forward_hook(lambda *args: calls.append(1))
    patch = torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(1))
    try:
        evaluation = _evaluation(pipeline)
        drawn = evaluation.draw(patch)
        assert not calls and len(drawn) == len(evaluation.batch_sizes) == 2
        # run whole, model included (what evaluations drew before), it draws the very same conditions
        monkeypatch.setattr(evaluation_module, "ModelStage", type("NotTheModelStage", (), {}))
        ran = _evaluation(pipeline).draw(patch)
        assert len(calls) == 2
    finally:
        handle.remove()
    for mine, theirs in zip(drawn, ran, strict=True):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(torch.as_tensor(mine[k]), torch.as_tensor(theirs[k])) for k in mine)
