"""PipelineBase: sampling, replay, control, dict inputs, seeding, errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from pandemonium.attack.stages.base import PipelineBase
from pandemonium.attack.stages.contract import (
    StageError,
    call_log_vizualizations,
    derive_seed,
    params_to_lists,
)
from pandemonium.testing import check_stage


def test_toy_stage_passes_the_contract(toys, patch_batch):
    check_stage(toys.AddLevel(), patch_batch)
    check_stage(toys.ToyImplant(), patch_batch)


def test_sample_is_split_into_one_dimensional_columns(toys, patch_batch):
    stage = toys.AddLevel()
    stage(patch_batch)
    sample = stage.get_last_sample_as_dict()
    assert sorted(sample) == ["level", "offset_0", "offset_1"]
    assert all(isinstance(v, np.ndarray) and v.shape == (3,) for v in sample.values())


def test_replay_is_exact_and_uses_the_given_params(toys, patch_batch):
    stage = toys.AddLevel()
    y, _ = stage(patch_batch)
    sample = stage.get_last_sample_as_dict()
    y_new, _ = stage(patch_batch)
    assert not torch.equal(y, y_new)  # the generator moved on
    y_replay, _ = stage(patch_batch, params=sample)
    assert torch.equal(y, y_replay)
    y_list, _ = stage(patch_batch, params={k: v.tolist() for k, v in sample.items()})
    assert torch.equal(y, y_list)


def test_control_reuses_the_previous_conditions(toys, patch_batch):
    stage = toys.AddLevel()
    y, _ = stage(patch_batch)
    before = stage.get_last_sample_as_dict()
    y_control, _ = stage(patch_batch, control=True)
    assert torch.equal(y, y_control)
    np.testing.assert_array_equal(before["level"], stage.get_last_sample_as_dict()["level"])


def test_control_without_a_previous_call_is_a_clear_error(toys, patch_batch):
    with pytest.raises(StageError, match="AddLevel.*control=True"):
        toys.AddLevel()(patch_batch, control=True)


def test_control_with_another_batch_size_is_an_error(toys, patch_batch):
    stage = toys.AddLevel()
    stage(patch_batch)
    with pytest.raises(StageError, match="control batch has 2 samples"):
        stage(patch_batch[:2], control=True)


def test_params_errors_name_stage_key_and_length(toys, patch_batch):
    stage = toys.AddLevel()
    stage(patch_batch)
    sample = stage.get_last_sample_as_dict()
    missing = {k: v for k, v in sample.items() if k != "offset_1"}
    with pytest.raises(StageError, match=r"'AddLevel'.*missing key 'offset_1'.*length 3"):
        stage(patch_batch, params=missing)
    short = {**sample, "level": sample["level"][:2]}
    with pytest.raises(StageError, match=r"'AddLevel'.*params\['level'\].*length 3"):
        stage(patch_batch, params=short)
    with pytest.raises(StageError, match=r"unknown params keys \['lvl'\]"):
        stage(patch_batch, params={**sample, "lvl": [0, 0, 0]})


def test_non_serialisable_params_name_stage_and_key(toys):
    with pytest.raises(StageError, match=r"'AddLevel'.*params\['sigma'\].*Tensor"):
        toys.AddLevel(sigma=torch.tensor(0.1))

    class PathStage(PipelineBase):
        name = "PathStage"

        def __init__(self, where):
            super().__init__()
            self.params = {"nested": {"where": where}}

    from pathlib import Path

    with pytest.raises(StageError, match=r"'PathStage'.*\['nested'\]\['where'\].*PosixPath|WindowsPath"):
        PathStage(Path("/tmp"))


def test_dict_input_touches_only_selected_keys(toys, patch_batch):
    stage = toys.AddLevel(keys=["a"])
    other = patch_batch.flip(0)
    out, _ = stage({"a": patch_batch, "b": other})
    assert out["b"] is other
    assert not torch.equal(out["a"], patch_batch)
    assert sorted(stage.get_last_sample_as_dict()) == ["a/level", "a/offset_0", "a/offset_1"]


def test_dict_input_without_keys_samples_each_patch_independently(toys, patch_batch):
    stage = toys.AddLevel()
    out, _ = stage({"a": patch_batch, "b": patch_batch})
    sample = stage.get_last_sample_as_dict()
    assert not np.array_equal(sample["a/level"], sample["b/level"])
    replay, _ = stage({"a": patch_batch, "b": patch_batch}, params=sample)
    assert torch.equal(out["a"], replay["a"]) and torch.equal(out["b"], replay["b"])
    control, _ = stage({"a": patch_batch, "b": patch_batch}, control=True)
    assert torch.equal(out["b"], control["b"])


def test_missing_patch_key_names_key_and_available(toys, patch_batch):
    stage = toys.AddLevel(keys=["c"])
    with pytest.raises(StageError, match=r"keys \['c'\] not in the input dict.*\['a', 'b'\]"):
        stage({"a": patch_batch, "b": patch_batch})
    with pytest.raises(StageError, match="keys=\\['c'\\] but got a single tensor"):
        stage(patch_batch)


def test_seeding_is_deterministic_per_position(toys, patch_batch):
    a, b, c = toys.AddLevel(), toys.AddLevel(), toys.AddLevel()
    a.set_seed(5, 1)
    b.set_seed(5, 1)
    c.set_seed(5, 2)
    ya, yb, yc = a(patch_batch)[0], b(patch_batch)[0], c(patch_batch)[0]
    assert torch.equal(ya, yb)
    assert not torch.equal(ya, yc)
    assert derive_seed(0, 1) != derive_seed(1, 0)
    assert derive_seed(3, 4) == derive_seed(3, 4)


def test_stage_does_not_touch_global_rng(toys, patch_batch):
    state = torch.get_rng_state()
    toys.AddLevel()(patch_batch)
    assert torch.equal(state, torch.get_rng_state())


def test_moving_recreates_the_generator(toys, patch_batch):
    stage = toys.AddLevel()
    stage.double()
    y, _ = stage(patch_batch.double())
    assert y.dtype == torch.float64
    stage.to("meta")
    assert stage.generator.device.type == "cpu"  # no meta generators: draws stay on the CPU
    stage.to("cpu")
    assert stage.generator.device.type == "cpu"


def test_sampled_values_must_have_batch_dimension(patch_batch):
    class Bad(PipelineBase):
        name = "BadSampler"

        def sample_params(self, batch_shape, device, evaluate=False):
            return {"level": self.uniform(0, 1, (1,), device)}

        def apply(self, x, params, control=False, evaluate=False, **kwargs):
            return x

    with pytest.raises(StageError, match="BadSampler.*'level'.*batch=3"):
        Bad()(patch_batch)


def test_apply_may_add_kwargs(toys, patch_batch):
    y, kwargs = toys.ToyImplant()(patch_batch, keep="me")
    assert kwargs["keep"] == "me" and "targets" in kwargs
    assert y.shape == (3, 3, 12, 12)


def test_description_and_validate(toys, patch_batch, caplog):
    stage = toys.AddLevel(sigma=0.2)
    description = stage.get_description()
    assert "**AddLevel**" in description and "0.2" in description and "Toy stochastic stage" in description
    assert stage.validate(patch_batch)
    with caplog.at_level(logging.WARNING):
        assert not stage.validate(torch.full_like(patch_batch, float("nan")))
    assert "NaN" in caplog.text


def test_params_to_lists_rejects_scalars():
    with pytest.raises(StageError, match="'s'.*'x'.*leading batch dimension"):
        params_to_lists({"x": torch.tensor(1.0)}, "s")


def test_log_vizualizations_is_called_adaptively():
    calls = []

    class Old:
        def log_vizualizations(self, x, x_control, writer, step):
            calls.append(("old", step))

    class New:
        def log_vizualizations(self, x, x_control, writer, step, logging_to_mlflow=False):
            calls.append(("new", logging_to_mlflow))

    class Loose:
        def log_vizualizations(self, x, x_control, writer, step, **kwargs):
            calls.append(("loose", kwargs["logging_to_mlflow"]))

    for stage in (Old(), New(), Loose()):
        call_log_vizualizations(stage, 1, 2, None, 7, True)
    assert calls == [("old", 7), ("new", True), ("loose", True)]


def test_replay_does_not_consume_random_numbers(toys, patch_batch):
    a, b = toys.AddLevel(), toys.AddLevel()
    a(patch_batch)
    b(patch_batch)
    b(patch_batch, params=b.get_last_sample_as_dict())  # a replay in between
    assert torch.equal(a(patch_batch)[0], b(patch_batch)[0])


def test_returned_sample_is_a_copy(toys, patch_batch):
    stage = toys.AddLevel()
    y, _ = stage(patch_batch)
    stage.get_last_sample_as_dict()["level"][:] = 99.0
    assert torch.equal(stage(patch_batch, control=True)[0], y)


def test_control_on_a_patch_the_previous_call_did_not_see(toys, patch_batch):
    stage = toys.AddLevel()
    stage({"a": patch_batch})
    with pytest.raises(StageError, match="control=True replays"):
        stage({"a": patch_batch, "b": patch_batch}, control=True)
