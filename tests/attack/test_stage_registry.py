"""The stage contract, checked on every registered built-in stage and on the seed/electricmayhem examples.

Like torchmetrics' shared tester: one table of tiny constructions, one test per registered stage. A
newly registered stage without a row in ``BUILTIN`` fails ``test_every_registered_stage_has_a_row``.
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from pandemonium.attack import Pipeline
from pandemonium.attack.evaluation import load_table, save_table
from pandemonium.attack.replay import check_replay
from pandemonium.attack.rows import (
    expand_patch,
    final_stage_input,
    params_to_rows,
    render_row,
    rows_to_params,
)
from pandemonium.attack.stages.base import stage_convention
from pandemonium.attack.stages.registry import registered_stages
from pandemonium.testing import check_stage
from pandemonium.testing.example_stages import EmHighPassFilter, EmRectangleImplanter, example_stages

PATCH = (4, 3, 8, 8)  # 4 rows: the batch size at which Kornia's batch-level values once broke
IMAGE = (4, 3, 16, 16)

# name -> (constructor kwargs given the bank path, input shape, needs an in-memory model)
BUILTIN = {
    "Resize": (lambda bank: {"size": 6}, PATCH, False),
    "ChannelStack": (lambda bank: {"channels": 3}, (4, 1, 8, 8), False),
    "Tile": (lambda bank: {"reps": [1, 2]}, PATCH, False),
    "RandomScroll": (lambda bank: {}, PATCH, False),
    "ReflectPadTranslate": (lambda bank: {"max_shift": 2}, PATCH, False),
    "LowPassFilter": (lambda bank: {"cutoff": 0.2}, PATCH, False),
    "HighPassFilter": (lambda bank: {"cutoff": 0.2}, PATCH, False),
    "SpectrumNoise": (lambda bank: {"max_amplitude": 0.3}, PATCH, False),
    "SoftProof": (lambda bank: {"lut_size": 5}, PATCH, False),
    "RectangleImplanter": (lambda bank: {"bank": bank, "scale": [0.5, 2.0], "match_brightness": True}, PATCH, False),
    "FixedRatioImplanter": (lambda bank: {"bank": bank, "ratio": [0.2, 0.5], "mask": "circle"}, PATCH, False),
    "ScaleToBoxImplanter": (lambda bank: {"bank": bank, "scale": [0.3, 1.0]}, PATCH, False),
    "PerspectiveImplanter": (lambda bank: {"bank": bank}, PATCH, False),
    "FusedImplantAugment": (
        lambda bank: {
            "bank": bank, "scale": [0.5, 1.5], "degrees": 20, "translate": 0.1, "perspective": 0.1,
            "brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "noise": 0.05, "blur_sigma": [0.5, 1.0],
        },
        PATCH,
        False,
    ),
    "KorniaAugment": (
        lambda bank: {
            "augmentations": {
                "ColorJiggle": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05, "p": 1.0},
                "RandomAffine": {"degrees": 15, "translate": [0.1, 0.1], "p": 0.8},
                "RandomGaussianNoise": {"std": 0.05, "p": 1.0},
            }
        },
        IMAGE,
        False,
    ),
    "ViewingAngleTilt": (lambda bank: {"max_tilt": 30.0, "p": 0.8}, IMAGE, False),
    "ModelStage": (lambda bank: {}, PATCH, True),
}


def tiny_model(seed: int = 0) -> nn.Module:
    """A deterministic 3-class conv net (weights from an explicit generator)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model




def build(name: str, bank: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, dict]:
    """The stage ``name`` from its row, its input batch, and the kwargs that rebuild it."""
    make_kwargs, shape, needs_model = BUILTIN[name]
    cls = registered_stages()[name]
    kwargs = make_kwargs(bank)
    rebuild = {}
    if needs_model:
        model = tiny_model()
        kwargs, rebuild = {"model": model}, {"model": model}
    stage = cls(**kwargs)
    stage.set_seed(seed, 1)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(seed))
    return stage, x, rebuild


def test_every_registered_stage_has_a_row():
    missing = sorted(set(registered_stages()) - set(BUILTIN))
    assert not missing, f"registered stages without a row in BUILTIN (add a tiny construction): {missing}"


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_builtin_stage_passes_check_stage(name, scene_bank):
    stage, x, rebuild = build(name, scene_bank)
    check_stage(stage, x, rebuild_kwargs=rebuild)


@pytest.mark.parametrize("name", sorted(example_stages()))
def test_seed_and_electricmayhem_style_stage_passes_check_stage(name):
    stage, shape = example_stages()[name]
    check_stage(stage, torch.rand(*shape, generator=torch.Generator().manual_seed(0)))


def test_electricmayhem_style_stages_run_in_a_pipeline_and_replay():
    stages = example_stages()
    pipe = Pipeline(
        stages["EmPatchStacker"][0],
        stages["EmPatchTiler"][0],
        stages["EmPatchResizer"][0],
        stages["SeedJitter"][0],
        EmHighPassFilter(limit=1),
        stages["EmRectangleImplanter"][0],
        tiny_model(),
        seed=1,
    )
    assert pipe.prefixes[4] == "4_EmHighPassFilter"  # no name attribute: the class name
    assert stage_convention(pipe[1]) == "_forward_single" and stage_convention(pipe[3]) == "forward"
    assert isinstance(pipe.find_stage("implant"), EmRectangleImplanter)
    patch = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    y, _ = pipe(patch)
    sample = pipe.get_last_sample_as_dict()
    assert {"3_SeedJitter/gain", "5_EmRectangleImplanter/scale"} <= set(sample)
    assert torch.equal(pipe(patch, params=sample)[0], y)
    check_replay(pipe, patch)


def test_electricmayhem_stage_handles_a_dict_of_patches():
    stage = EmHighPassFilter(limit=1, keys=["a"])
    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    out, _ = stage({"a": a, "b": b})
    assert torch.equal(out["b"], b) and not torch.equal(out["a"], a)
    assert torch.equal(out["a"], stage(a)[0])


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_any_row_rerenders_alone_from_its_stored_params(name, scene_bank, tmp_path):
    """A batch of 4 rows is rendered, its sample stored as table rows (Parquet round trip), and single
    rows, in random order, re-render bit for bit: patched and control (evaluate=True, as render_row
    does) and, for train-time conditions, through rows_to_params with evaluate=False."""
    stage, x, _ = build(name, scene_bank)
    pipe = Pipeline(stage, tiny_model(), seed=3) if name != "ModelStage" else Pipeline(stage, seed=3)
    patch = x[0]
    batch = expand_patch(patch, 4)
    order = torch.randperm(4, generator=torch.Generator().manual_seed(len(name))).tolist()
    for evaluate in (True, False):
        with torch.no_grad():
            pipe(batch, evaluate=evaluate)
            sample = pipe.get_last_sample_as_dict()
            images = final_stage_input(pipe, batch, evaluate=evaluate, params=sample)
            control = final_stage_input(pipe, batch, evaluate=evaluate, control=True, params=sample)
        cols, spec = params_to_rows(sample, 4)
        table = pd.DataFrame({"row": range(4), **cols})
        table.attrs["param_spec"] = spec
        table = load_table(save_table(table, tmp_path / f"rows_{evaluate}"))
        for i in order:
            if evaluate:
                assert torch.equal(render_row(pipe, patch, table.iloc[i])[0], images[i]), f"row {i}"
                assert torch.equal(render_row(pipe, patch, table.iloc[[i]], control=True)[0], control[i])
            else:
                with torch.no_grad():
                    alone = final_stage_input(
                        pipe, expand_patch(patch, 1), evaluate=False, params=rows_to_params(table.iloc[[i]])
                    )
                assert torch.equal(alone[0], images[i]), f"row {i} (evaluate=False)"
