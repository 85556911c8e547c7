"""FixedEvaluation draws its fixed conditions without running a final model stage (it draws nothing),
and they are the conditions a run of the whole pipeline draws."""

from __future__ import annotations

import torch
from torch import nn

from pandemonium.attack import Pipeline, RandomScroll, SpectrumNoise
from pandemonium.attack import evaluation as evaluation_module
from pandemonium.attack.evaluation import FixedEvaluation


class _CountingModel(nn.Module):
    """Wraps a model and counts its calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def _draw(pipeline, patch):
    evaluation = FixedEvaluation(pipeline, lambda *args, **kwargs: {}, {}, num_eval=5, batch_size=3, seed=4)
    return evaluation.draw(patch)


def _same(drawn, expected):
    assert len(drawn) == len(expected) == 2  # batches of 3 and 2
    for mine, theirs in zip(drawn, expected):
        assert mine.keys() == theirs.keys() and len(mine) >= 3
        assert all(torch.equal(torch.as_tensor(mine[k]), torch.as_tensor(theirs[k])) for k in mine)


def test_conditions_are_drawn_without_the_model_and_equal_a_whole_run(toys, patch_batch, classifier, monkeypatch):
    counting = _CountingModel(classifier)
    pipe = Pipeline(RandomScroll(), toys.AddLevel(), SpectrumNoise(), counting, seed=5)
    drawn = _draw(pipe, patch_batch[0])
    assert counting.calls == 0
    # the whole run, model included: what every evaluation drew before
    monkeypatch.setattr(evaluation_module, "ModelStage", type("NotTheModelStage", (), {}))
    whole = _draw(pipe, patch_batch[0])
    assert counting.calls == 2
    _same(drawn, whole)


def test_a_stage_after_the_model_is_drawn_with_the_model_run(toys, patch_batch, classifier):
    counting = _CountingModel(classifier)
    conditions = _draw(Pipeline(RandomScroll(), counting, toys.AddLevel(), seed=5), patch_batch[0])
    assert counting.calls == 2  # a stage after the model may draw from the model's output
    assert all("2_AddLevel/level" in batch for batch in conditions)
