"""check_stage must catch each kind of broken stage (and pass good ones: see test_create / test_base)."""

from __future__ import annotations

import pytest
import torch

from pandemonium.attack.stages.base import PipelineBase
from pandemonium.testing import check_loss, check_stage
from pandemonium.testing.stages import StageContractError


class GlobalRandom(PipelineBase):
    """Draws from global RNG state and ignores params: replay cannot work."""

    name = "GlobalRandom"

    def __init__(self, keys=None):
        super().__init__(keys=keys)
        self.params = {"keys": self.keys}

    def forward(self, x, control=False, evaluate=False, params=None, **kwargs):
        return x + torch.rand(x.shape[0], 1, 1, 1), kwargs

    def get_last_sample_as_dict(self):
        return {}


class DropsKwargs(PipelineBase):
    name = "DropsKwargs"

    def forward(self, x, control=False, evaluate=False, params=None, **kwargs):
        return x, {}


class ResamplesOnControl(PipelineBase):
    """Ignores control=True: draws new conditions each call."""

    name = "ResamplesOnControl"

    def __init__(self, keys=None):
        super().__init__(keys=keys)
        self.params = {"keys": self.keys}

    def sample_params(self, batch_shape, device, evaluate=False):
        return {"level": self.uniform(0, 1, (batch_shape[0],), device)}

    def forward(self, x, control=False, evaluate=False, params=None, **kwargs):
        return super().forward(x, control=False, evaluate=evaluate, params=params, **kwargs)

    def apply(self, x, params, control=False, evaluate=False, **kwargs):
        return x + params["level"].view(-1, 1, 1, 1)


class PlainTensorAttribute(PipelineBase):
    name = "PlainTensorAttribute"

    def __init__(self, keys=None):
        super().__init__(keys=keys)
        self.offset = torch.ones(1)  # not a buffer: would stay on the CPU
        self.params = {"keys": self.keys}

    def apply(self, x, params, control=False, evaluate=False, **kwargs):
        return x + self.offset.to(x.dtype)


class ParamsDoNotRebuild(PipelineBase):
    name = "ParamsDoNotRebuild"

    def __init__(self, scale=2.0, keys=None):
        super().__init__(keys=keys)
        self.scale = scale
        self.params = {"keys": self.keys}  # forgot "scale"

    def apply(self, x, params, control=False, evaluate=False, **kwargs):
        return x * self.scale


class ImplantLeaksPatch(PipelineBase):
    """Claims to implant but keeps the patch in the control batch."""

    name = "ImplantLeaksPatch"
    consumes_patch = True

    def __init__(self, keys=None):
        super().__init__(keys=keys)
        self.params = {"keys": self.keys}

    def apply(self, x, params, control=False, evaluate=False, **kwargs):
        return x * 0.5


class IgnoresKeys(PipelineBase):
    """Overrides forward and treats the dict itself, touching every patch."""

    name = "IgnoresKeys"

    def __init__(self, keys=None):
        super().__init__(keys=keys)
        self.params = {"keys": self.keys}

    def forward(self, x, control=False, evaluate=False, params=None, **kwargs):
        if isinstance(x, dict):
            return {k: v * 0.5 for k, v in x.items()}, kwargs
        return x * 0.5, kwargs


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (GlobalRandom(), "did not reproduce|control=True must apply"),
        (DropsKwargs(), "kwargs must be passed through"),
        (ResamplesOnControl(), "control=True"),
        (PlainTensorAttribute(), r"plain attributes \['offset'\]"),
        (ParamsDoNotRebuild(scale=3.0), "type\\(stage\\)\\(\\*\\*stage.params\\)"),
        (ImplantLeaksPatch(), "control=True output changes with the patch"),
        (IgnoresKeys(), "keys=\\['a'\\] must leave patch 'b' untouched"),
    ],
    ids=lambda v: getattr(v, "name", "msg"),
)
def test_broken_stage_is_caught(stage, message, patch_batch):
    with pytest.raises(StageContractError, match=message) as info:
        check_stage(stage, patch_batch)
    assert stage.name in str(info.value)


def test_check_loss_accepts_per_sample_terms():
    def loss(outputs, **kwargs):
        return {"a": outputs.sum(dim=1)}

    loss.name = "toy"
    terms = check_loss(loss, torch.ones(4, 2))
    assert terms["a"].shape == (4,)
