"""Pipeline: composition, merged replay, evaluate, validate, YAML round trip."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import torch
from torch import nn

from pandemonium.attack import ModelStage, Pipeline, RandomScroll, Resize, SpectrumNoise, StageError
from pandemonium.attack.stages.create import ReflectPadTranslate


class RecordingWriter:
    """Stands in for a SummaryWriter: records every add_images/add_image call."""

    def __init__(self):
        self.calls = []

    def add_images(self, tag, images, global_step=None):
        self.calls.append((tag, tuple(images.shape), global_step))

    def add_image(self, tag, image, global_step=None):
        self.calls.append((tag, tuple(image.shape), global_step))


def test_composition_forms_give_the_same_pipeline(toys, classifier):
    a, b = RandomScroll(), toys.AddLevel()
    by_args = Pipeline(a, b, classifier)
    by_plus = a + b + classifier
    assert isinstance(by_plus, Pipeline)
    assert by_args.prefixes == by_plus.prefixes == ["0_RandomScroll", "1_AddLevel", "2_ModelStage"]
    assert isinstance(by_plus[2], ModelStage)
    nested = Pipeline(Pipeline(a, b), classifier)
    assert nested.prefixes == by_args.prefixes
    # a plain module on the left works through __radd__ (except nn.Sequential, whose __add__ raises
    # instead of deferring: use Pipeline(sequential, stage) there)
    assert (nn.Conv2d(3, 3, 1) + a).prefixes == ["0_ModelStage", "1_RandomScroll"]


def test_merged_sample_replays_the_whole_pipeline(toys, patch_batch, classifier):
    pipe = Pipeline(RandomScroll(), toys.AddLevel(), SpectrumNoise(), classifier, seed=3)
    x = patch_batch.clone().requires_grad_(True)
    y, kwargs = pipe(x, note=1)
    assert kwargs == {"note": 1}
    assert y.shape == (3, 3)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    sample = pipe.get_last_sample_as_dict()
    assert "0_RandomScroll/shift_0" in sample and "1_AddLevel/offset_1" in sample
    assert "2_SpectrumNoise/noise_seed" in sample
    y_other, _ = pipe(patch_batch)
    assert not torch.equal(y.detach(), y_other)
    y_replay, _ = pipe(patch_batch, params=sample)
    assert torch.equal(y.detach(), y_replay)


def test_unknown_prefix_in_params_is_an_error(toys, patch_batch):
    pipe = Pipeline(toys.AddLevel(), RandomScroll())
    pipe(patch_batch)
    sample = pipe.get_last_sample_as_dict()
    sample["7_Nope/level"] = sample.pop("0_AddLevel/level")
    with pytest.raises(StageError, match=r"'7_Nope/level'.*\['0_AddLevel', '1_RandomScroll'\]"):
        pipe(patch_batch, params=sample)


def test_seed_controls_the_draws(toys, patch_batch):
    y0 = Pipeline(toys.AddLevel(), seed=0)(patch_batch)[0]
    y0b = Pipeline(toys.AddLevel(), seed=0)(patch_batch)[0]
    y1 = Pipeline(toys.AddLevel(), seed=1)(patch_batch)[0]
    assert torch.equal(y0, y0b)
    assert not torch.equal(y0, y1)


def test_evaluate_runs_batch_and_control_and_logs_each_stage(toys, patch_batch, classifier):
    seen = []

    class Spy(toys.AddLevel):
        def log_vizualizations(self, x, x_control, writer, step, logging_to_mlflow=False):
            seen.append((x.clone(), x_control.clone(), step, logging_to_mlflow))

    implant = toys.ToyImplant()
    pipe = Pipeline(toys.AddLevel(), implant, Spy(), classifier)
    writer = RecordingWriter()
    result = pipe.evaluate(patch_batch, writer=writer, step=4, logging_to_mlflow=True)
    assert set(result) == {"output", "control_output", "kwargs", "control_kwargs", "params"}
    assert result["output"].shape == result["control_output"].shape == (3, 3)
    assert not torch.is_grad_enabled() or result["output"].grad_fn is None
    ((x_in, x_control, step, mlflow),) = seen
    assert step == 4 and mlflow is True
    # the Spy stage sits after the implanter: its control input is the bare bank image of the same draw
    sample = result["params"]
    bank_images = implant.bank[torch.as_tensor(sample["1_ToyImplant/image"])]
    assert torch.equal(x_control, bank_images)
    assert not torch.equal(x_in, x_control)
    # replaying the returned params reproduces the evaluation output
    again = pipe.evaluate(patch_batch, params=sample)
    assert torch.equal(again["output"], result["output"])


def test_failing_visualisation_warns_and_keeps_results(toys, patch_batch):
    class Broken(toys.AddLevel):
        def log_vizualizations(self, x, x_control, writer, step, logging_to_mlflow=False):
            raise KeyError("boom")

    pipe = Pipeline(toys.AddLevel(), Broken())
    with pytest.warns(RuntimeWarning, match="1_AddLevel: log_vizualizations failed: KeyError"):
        result = pipe.evaluate(patch_batch, writer=RecordingWriter())
    assert result["output"].shape == patch_batch.shape
    with pytest.raises(KeyError):
        pipe.evaluate(patch_batch, writer=RecordingWriter(), strict_visualizations=True)


def test_create_stages_log_their_input(patch_batch):
    writer = RecordingWriter()
    Pipeline(Resize(4), RandomScroll()).evaluate(patch_batch, writer=writer, step=2)
    assert ("Resize/input", (3, 3, 8, 8), 2) in writer.calls
    assert ("RandomScroll/input", (3, 3, 4, 4), 2) in writer.calls


def test_validate(toys, patch_batch, caplog):
    pipe = Pipeline(toys.AddLevel(), RandomScroll())
    assert pipe.validate(patch_batch)
    with caplog.at_level(logging.WARNING):
        assert not pipe.validate(torch.full_like(patch_batch, float("nan")))
    with caplog.at_level(logging.ERROR):
        assert not Pipeline(toys.AddLevel(keys=["zz"])).validate({"a": patch_batch})
    assert "zz" in caplog.text


def test_yaml_round_trip_of_builtin_stages(tmp_path, patch_batch):
    pipe = Pipeline(Resize(6), ReflectPadTranslate(1), SpectrumNoise(0.3), seed=11)
    path = tmp_path / "pipe.yaml"
    text = pipe.to_yaml(path)
    assert "_target_: pandemonium.attack.stages.create.Resize" in text
    json.dumps(pipe.to_config())  # plain data
    loaded = Pipeline.from_yaml(path)
    assert loaded.to_config() == pipe.to_config()
    assert torch.equal(pipe(patch_batch)[0], loaded(patch_batch)[0])
    from_text = Pipeline.from_yaml(text)
    assert from_text.prefixes == pipe.prefixes
    assert Pipeline.from_yaml(str(path)).prefixes == pipe.prefixes
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        Pipeline.from_yaml(tmp_path / "missing.yaml")


def test_short_names_in_config(patch_batch):
    cfg = {"seed": 2, "stages": [{"_target_": "Resize", "size": 4}, {"_target_": "RandomScroll"}]}
    pipe = Pipeline.from_config(cfg)
    assert pipe.prefixes == ["0_Resize", "1_RandomScroll"]
    with pytest.raises(ValueError, match="unknown stage 'Resise'.*did you mean.*Resize"):
        Pipeline.from_config({"stages": [{"_target_": "Resise", "size": 4}]})
    with pytest.raises(StageError, match="stage 0 \\(Resize\\) rejected its kwargs"):
        Pipeline.from_config({"stages": [{"_target_": "Resize", "sise": 4}]})


def test_in_memory_model_gets_a_placeholder(classifier, patch_batch, caplog):
    pipe = RandomScroll() + classifier
    with caplog.at_level(logging.INFO):
        cfg = pipe.to_config()
    assert cfg["stages"][1]["model"] == "???"
    assert "cannot be serialised" in caplog.text
    with pytest.raises(StageError, match=r"placeholder '\?\?\?'.*model=my_model"):
        Pipeline.from_config(cfg)
    rebuilt = Pipeline.from_yaml(pipe.to_yaml(), model=classifier)
    assert torch.equal(rebuilt(patch_batch)[0], pipe(patch_batch)[0])


def test_model_factory_and_torchscript_round_trip(tmp_path, classifier, patch_batch):
    factory = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 2, "kernel_size": 3}
    pipe = Pipeline(ModelStage(factory))
    cfg = pipe.to_config()
    assert cfg["stages"][0]["model"] == factory
    assert isinstance(Pipeline.from_config(cfg)[0].models["0"], nn.Conv2d)

    path = tmp_path / "model.pt"
    torch.jit.script(classifier).save(str(path))
    scripted = Pipeline(ModelStage({"torchscript": str(path)}))
    loaded = Pipeline.from_yaml(scripted.to_yaml())
    assert torch.allclose(loaded(patch_batch)[0], classifier(patch_batch))
    with pytest.raises(StageError, match="cannot load TorchScript model"):
        ModelStage({"torchscript": str(tmp_path / "missing.pt")})


def test_description_lists_stages(toys):
    text = Pipeline(Resize(4), toys.AddLevel()).get_description()
    assert "0. **Resize**" in text and "1. **AddLevel**" in text


def test_pipeline_moves_with_its_stages(toys, patch_batch, classifier):
    pipe = Pipeline(toys.AddLevel(), classifier).double()
    y, _ = pipe(patch_batch.double())
    assert y.dtype == torch.float64


def test_register_stage_for_plugins(toys, patch_batch):
    from pandemonium.attack.stages.registry import STAGE_REGISTRY, register_stage

    try:

        @register_stage("test_plugin_level")
        class PluginLevel(toys.AddLevel):
            name = "PluginLevel"

        pipe = Pipeline.from_config({"stages": [{"_target_": "test_plugin_level", "sigma": 0.3}]})
        assert isinstance(pipe[0], PluginLevel) and pipe[0].params["sigma"] == 0.3

        class Impostor(toys.AddLevel):
            name = "Impostor"

        with pytest.raises(ValueError, match="'test_plugin_level' is already registered"):
            register_stage("test_plugin_level")(Impostor)
    finally:
        STAGE_REGISTRY.pop("test_plugin_level", None)


def test_stage_errors_say_which_stage(toys, patch_batch):
    pipe = Pipeline(Resize(4), toys.AddLevel(keys=["x"]))
    with pytest.raises(StageError) as info:
        pipe({"a": patch_batch})
    assert "'AddLevel'" in str(info.value) and "['x']" in str(info.value)
    if sys.version_info >= (3, 11):  # exception notes
        assert info.value.__notes__ == ["in pipeline stage 1_AddLevel"]


def test_package_exports_resolve():
    import pandemonium.attack as package

    for name in package.__all__:
        assert getattr(package, name) is not None
    from pandemonium import Pipeline as TopLevel
    from pandemonium import PipelineBase as TopBase

    assert TopLevel is Pipeline and issubclass(Resize, TopBase)


def test_patch_optimisation_through_the_pipeline(toys, classifier):
    """Gradients reach the patch latent: a few signed-gradient steps lower a targeted loss.

    (A hand-written step rather than torch.optim: creating the first optimiser imports torch._dynamo,
    which costs seconds on the shared CI cores.)"""
    from pandemonium.attack.losses import (
        ClassificationTargeted,
        CompositeLoss,
        TotalVariation,
        weighted_total,
    )
    from pandemonium.attack.patches import SigmoidPatch

    patch = SigmoidPatch((3, 6, 6), init="grey", seed=0)
    pipe = Pipeline(RandomScroll(), toys.ToyImplant(image_size=8), classifier, seed=0)
    loss = CompositeLoss([ClassificationTargeted(2), TotalVariation()])

    def targeted_on_fixed_batch():
        with torch.no_grad():
            pipe.set_seed(123)
            y, kwargs = pipe(patch.batch(4))
            return float(loss(y, patch=patch(), **kwargs)["targeted"].mean())

    before = targeted_on_fixed_batch()
    pipe.set_seed(0)
    for _ in range(15):
        y, kwargs = pipe(patch.batch(4))
        total = weighted_total(loss(y, patch=patch(), **kwargs), {"targeted": 1.0, "tv": 0.01})
        patch.zero_grad()
        total.backward()
        with torch.no_grad():
            patch.latent -= 0.3 * patch.latent.grad.sign()
    assert targeted_on_fixed_batch() < before


def test_visualisations_with_a_real_summary_writer(tmp_path, patch_batch):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path))
    try:
        Pipeline(Resize(4), RandomScroll()).evaluate(
            patch_batch, writer=writer, step=1, strict_visualizations=True
        )
    finally:
        writer.close()
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_find_stage_by_role_not_position(patch_batch, classifier, toys):
    implant = toys.ToyImplant()
    pipe = Pipeline(Resize(8), toys.AddLevel(), implant, classifier)
    assert pipe.find_stage("implant") is implant  # the older consumes_patch flag gives the role
    assert pipe.stages_with_role("create") == [0] and pipe.stages_with_role("implant") == [2]
    assert isinstance(pipe.find_stage("model"), ModelStage)
    with pytest.raises(StageError, match=r"no stage with role 'augment'.*'2_ToyImplant': 'implant'"):
        pipe.find_stage("augment")
    with pytest.raises(StageError, match="unknown stage role 'implanter'"):
        pipe.find_stage("implanter")
