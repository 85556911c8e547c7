"""The one config builder and the one plain-data converter."""

from __future__ import annotations

import enum
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pandemonium.build import BuildError, instantiate
from pandemonium.errors import ConfigError, PandemoniumError
from pandemonium.plain import to_plain


class Colour(enum.Enum):
    RED = "red"


def test_instantiate_builds_nested_targets_and_overrides():
    spec = OmegaConf.create({"_target_": "builtins.dict", "inner": {"_target_": "fractions.Fraction", "numerator": 1,
                                                                    "denominator": 2}, "x": 1})
    built = instantiate(spec, what="thing", x=5)
    assert built["x"] == 5
    assert float(built["inner"]) == 0.5


def test_instantiate_registry_short_names_and_close_match_hint():
    assert instantiate({"_target_": "Box", "a": 1}, what="stage", registry={"Box": dict}) == {"a": 1}
    with pytest.raises(BuildError, match=r"stage: unknown _target_ 'Bx'; did you mean Box"):
        instantiate({"_target_": "Bx"}, what="stage", registry={"Box": dict})


def test_instantiate_errors_have_one_format_and_one_root():
    with pytest.raises(BuildError, match=r"^loss: cannot import _target_ 'no.such.Thing'"):
        instantiate({"_target_": "no.such.Thing"}, what="loss")
    with pytest.raises(BuildError, match=r"^loss: cannot build 'fractions.Fraction': "):
        instantiate({"_target_": "fractions.Fraction", "bogus": 1}, what="loss")
    with pytest.raises(BuildError, match="has no _target_"):
        instantiate({"a": 1}, what="loss")
    assert issubclass(BuildError, ConfigError) and issubclass(ConfigError, PandemoniumError)


def test_instantiate_optional_kwargs_only_when_accepted():
    # as_float(value) has no `num_classes`: dropped; dict(**kwargs) takes anything: passed
    assert instantiate({"_target_": "pandemonium.plain.as_float", "value": 2}, what="x",
                       optional={"num_classes": 3}) == 2.0
    assert instantiate({"_target_": "builtins.dict"}, what="x", optional={"num_classes": 3}) == {"num_classes": 3}
    assert instantiate({"_target_": "builtins.dict", "num_classes": 1}, what="x",
                       optional={"num_classes": 3}) == {"num_classes": 1}


def test_to_plain_converts_every_kind():
    value = {"p": Path("a/b"), "nan": float("nan"), "t": torch.tensor(2.5), "arr": np.arange(3), "e": Colour.RED,
             "cfg": OmegaConf.create({"k": [1, 2]}), "tup": (1, "x"), "np": np.float32(1.5), 3: None}
    plain = to_plain(value)
    assert plain == {"p": "a/b", "nan": None, "t": 2.5, "arr": [0, 1, 2], "e": "red", "cfg": {"k": [1, 2]},
                     "tup": [1, "x"], "np": 1.5, "3": None}
    assert to_plain(float("inf")) is None and to_plain(1.0) == 1.0 and not math.isnan(to_plain(0.0))
