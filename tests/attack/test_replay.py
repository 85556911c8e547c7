"""check_replay: a whole pipeline replays bit for bit, or the first stage that does not is named."""

from __future__ import annotations

import pytest
import torch

from pandemonium.attack import Pipeline, RandomScroll, Resize
from pandemonium.attack.replay import check_replay, first_difference
from pandemonium.attack.stages.base import PipelineBase, StageError


class IgnoresParams(PipelineBase):
    """Draws from its generator on every call, even when params are given: not replayable."""

    name = "IgnoresParams"

    def __init__(self):
        super().__init__()
        self.params = {}

    def forward(self, x, control=False, evaluate=False, params=None, **kwargs):
        level = torch.rand(x.shape[0], generator=self.generator).view(-1, 1, 1, 1)
        return x + level, kwargs

    def get_last_sample_as_dict(self):
        return {}


def test_good_pipeline_passes_and_leaves_random_streams_alone(patch_batch, classifier, toys):
    def build():
        return Pipeline(toys.AddLevel(), RandomScroll(), toys.ToyImplant(), classifier, seed=3)

    checked, fresh = build(), build()
    check_replay(checked, patch_batch)
    # the check drew random numbers, but the next training call sees the same stream as without it
    assert torch.equal(checked(patch_batch)[0], fresh(patch_batch)[0])
    assert first_difference(checked.get_last_sample_as_dict(), fresh.get_last_sample_as_dict()) is None


def test_first_broken_stage_is_named(patch_batch, classifier, toys):
    pipe = Pipeline(Resize(8), IgnoresParams(), toys.AddLevel(), classifier)
    with pytest.raises(StageError, match=r"stage 1_IgnoresParams: evaluate=False, params=.*largest difference"):
        check_replay(pipe, patch_batch)


def test_control_that_ignores_the_sample_is_caught(patch_batch, toys):
    class ControlRedraws(toys.AddLevel):
        name = "ControlRedraws"

        def forward(self, x, control=False, evaluate=False, params=None, **kwargs):
            if control and params is None:  # forgets the last conditions
                return super().forward(x, evaluate=evaluate, **kwargs)
            return super().forward(x, control=control, evaluate=evaluate, params=params, **kwargs)

    with pytest.raises(StageError, match="stage 0_ControlRedraws: evaluate=False, control=True"):
        check_replay(Pipeline(ControlRedraws()), patch_batch)
