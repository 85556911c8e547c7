"""Plugins through the entry point group ``pandemonium.plugins``; the installed example plugin."""

from __future__ import annotations

import json
import types
from importlib import metadata

import pytest

from pandemonium.plugins import ENTRY_POINT_GROUP, PluginRegistry, load_plugins
from pandemonium.runs.base import build_scheduler
from pandemonium.runs.file_manager import FileManager


class FakeEntryPoint:
    def __init__(self, name, target):
        self.name = name
        self._target = target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


def test_good_plugins_load_and_a_broken_one_is_reported_by_name(tmp_path):
    (tmp_path / "mode").mkdir()

    def as_callable(registry):
        registry.add_config_path(tmp_path)
        registry.add_artifact_key("heatmaps_test", "{proj_path}/HEATMAPS/{task_name}/{file_name}")

    as_module = types.ModuleType("fake_plugin_module")
    as_module.register = lambda registry: registry.add_scheduler("fake", "x.y.FakeScheduler")

    def raises(registry):
        raise RuntimeError("boom")

    registry = load_plugins(entry_points=[
        FakeEntryPoint("callable_plugin", as_callable),
        FakeEntryPoint("module_plugin", as_module),
        FakeEntryPoint("broken_plugin", raises),
        FakeEntryPoint("unimportable_plugin", ImportError("No module named 'gone'")),
        FakeEntryPoint("not_a_plugin", 42),
    ])
    assert set(registry.loaded) == {"callable_plugin", "module_plugin"}
    assert registry.config_paths == [tmp_path]
    assert registry.schedulers == {"fake": "x.y.FakeScheduler"}
    assert "RuntimeError: boom" in registry.failed["broken_plugin"]
    assert "No module named 'gone'" in registry.failed["unimportable_plugin"]
    assert "neither callable" in registry.failed["not_a_plugin"]
    assert any(line.startswith("broken_plugin: FAILED") for line in registry.describe())
    assert "heatmaps_test" not in FileManager._class_assignments  # recorded, not applied yet
    try:
        registry.activate()
        assert FileManager(tmp_path / "p", tmp_path / "r").template_for("heatmaps_test").startswith("{proj_path}/HEATMAPS")
    finally:
        FileManager.remove_assignment_path("heatmaps_test")


def test_registry_adds_modalities_and_task_types():
    from pandemonium.tasks.attributes import TASK_TYPE_TARGETS, Modality, TaskType, unregister_modality
    from pandemonium.tasks.loaders import DEFAULT_LOADERS, ValueLoader
    from pandemonium.tasks.verifiers import MODALITY_VERIFIER_MAP, verify_value
    from pandemonium.tasktypes import unregister_task_type

    class HeatLoader(ValueLoader):
        pass

    registry = PluginRegistry()
    registry.add_modality("HEATMAP_TEST", "heatmap_test", loader_cls=HeatLoader, verifier=verify_value)
    registry.add_task_type("HEAT_REGRESSION_TEST", "heat_regression_test", requires=["heatmap_test"],
                           target="heatmap_test")
    registry.activate()
    try:
        heat = Modality("heatmap_test")
        assert heat.name == "HEATMAP_TEST"
        assert TASK_TYPE_TARGETS[TaskType("heat_regression_test")] is heat
        assert DEFAULT_LOADERS[heat] is HeatLoader and MODALITY_VERIFIER_MAP[heat] is verify_value
    finally:  # enums are process-global: leave nothing behind for other tests
        unregister_task_type("heat_regression_test")
        DEFAULT_LOADERS.pop(heat, None)
        MODALITY_VERIFIER_MAP.pop(heat, None)
        unregister_modality(heat)
    with pytest.raises(FileNotFoundError):
        registry.add_config_path("/no/such/folder")


def test_example_plugin_is_installed_and_registers_everything():
    names = [ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)]
    assert "example" in names, "pip install -e examples/pandemonium_example_plugin"
    registry = load_plugins(reload=True)
    assert "example" in registry.loaded, registry.failed
    assert any((p / "mode" / "example_count.yaml").is_file() for p in registry.config_paths)
    assert "example_stripes" in registry.task_creators
    assert registry.artifact_keys["example_counts"].startswith("{proj_path}")


@pytest.fixture
def example_plugin_active():
    """Activate the installed plugins for one test and undo the registrations afterwards."""
    registry = load_plugins(reload=True, activate=True)
    yield registry
    registry.deactivate()
    load_plugins(reload=True)


def test_example_plugin_task_creator_and_mode(compose, pandemonium_roots, example_plugin_active):
    created = build_scheduler(compose("mode=create", "task_list=[example_stripes]")).run()
    assert created["example_stripes"]["status"] == "created"
    forced = build_scheduler(compose("mode=create", "task_list=[example_stripes]", "mode.force=true")).run()
    assert forced["example_stripes"]["status"] == "created"
    sched = build_scheduler(compose("mode=example_count", "task_list=[example_stripes]", "mode.scale=3"))
    assert sched.run() == 24 * 3
    counts = sched.get_struct("example_stripes").paths["example_counts"]
    assert counts.parent == pandemonium_roots.out_dir / "default" / "EXAMPLE_COUNTS" / "example_stripes"
    assert json.loads(counts.read_text())["samples"] == 24


def test_fixtures(pandemonium_roots, fake_task):
    import os

    assert os.environ["PANDEMONIUM_DATA"] == str(pandemonium_roots.data_dir)
    assert os.environ["PANDEMONIUM_RESULTS"] == str(pandemonium_roots.out_dir)
    assert fake_task.name == "fake_cls" and fake_task.num_samples == 12
    assert (pandemonium_roots.data_dir / "tasks" / "fake_cls" / "task.json").is_file()
    assert pandemonium_roots.runs() == []


def test_a_registration_clash_names_the_plugin():
    from pandemonium.plugins import PluginError

    registry = load_plugins(entry_points=[FakeEntryPoint(
        "clashing_plugin", lambda r: r.add_task_type("CLASSIFICATION", "not_classification", ["class"], "class"))])
    with pytest.raises(PluginError, match="plugin 'clashing_plugin': could not register task_type:not_classification"):
        registry.activate()


def test_registry_adds_stages_task_type_specs_and_modality_geometry(tmp_path):
    import torch

    from pandemonium.attack.stages.registry import STAGE_REGISTRY
    from pandemonium.tasks.attributes import (
        KORNIA_VALID_MODALITIES,
        Geometry,
        Modality,
        TaskType,
        modality_geometry,
    )
    from pandemonium.tasktypes import TaskTypeSpec, task_type_spec
    from pandemonium.testing import check_stage

    spec = TaskTypeSpec(name="heat_spec_test", requires=frozenset({"heat_spec_modality"}),
                        target="heat_spec_modality", loss="heat_loss_test", metrics="regression")

    def register(registry):
        registry.add_modality("HEAT_SPEC_MODALITY", "heat_spec_modality", geometry="dense")
        registry.add_task_type(spec)
        registry.add_stage("pandemonium_example_plugin.stages.ExampleDesaturate", name="DesaturateTest")

    registry = load_plugins(entry_points=[FakeEntryPoint("spec_plugin", register)])
    assert registry.contributions["spec_plugin"] == [
        "modality:heat_spec_modality", "task_type:heat_spec_test", "stage:DesaturateTest"]
    assert "DesaturateTest" not in STAGE_REGISTRY  # recorded, not applied yet
    registry.activate()
    try:
        heat = Modality("heat_spec_modality")
        assert modality_geometry(heat) is Geometry.DENSE and KORNIA_VALID_MODALITIES[heat] == "mask"
        assert task_type_spec("heat_spec_test") is spec and spec.enum.requires() == {
            Modality.IMAGE, Modality.SAMPLE_ID, heat}
        stage = STAGE_REGISTRY["DesaturateTest"](max_amount=0.4)
        stage.set_seed(0, 0)
        check_stage(stage, torch.rand(4, 3, 16, 16))
    finally:
        registry.deactivate()
    assert "DesaturateTest" not in STAGE_REGISTRY
    assert "heat_spec_test" not in {t.value for t in TaskType}
    assert "heat_spec_modality" not in {m.value for m in Modality}


def test_plugin_config_folders_are_searched_for_every_group(tmp_path):
    from pandemonium.models.lightning_module import CONFIGS_ROUTES, build_loss, metrics_config
    from pandemonium.plugins import config_search_path, load_group_config
    from pandemonium.tasks import TaskType

    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "plugin_l1_test.yaml").write_text("_target_: pandemonium.models.losses.RegressionLoss\n")
    (tmp_path / "loss" / "defaults.yaml").write_text("regression: plugin_l1_test\n")
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "plugin_metrics_test.yaml").write_text(
        "monitor: mae\nmode: min\nmetrics:\n  mae:\n    _target_: torchmetrics.regression.MeanAbsoluteError\n")
    (tmp_path / "attack").mkdir()
    (tmp_path / "attack" / "plugin_preset_test.yaml").write_text("name: plugin_preset_test\n")

    import pandemonium.plugins as plugins

    before = plugins._REGISTRY
    plugins._REGISTRY = load_plugins(entry_points=[FakeEntryPoint("cfg_plugin", lambda r: r.add_config_path(tmp_path))])
    try:
        assert config_search_path()[-1] == tmp_path
        assert load_group_config("attack", "plugin_preset_test") == {"name": "plugin_preset_test"}
        assert metrics_config("regression", "plugin_metrics_test")["monitor"] == "mae"
        # a plugin's defaults.yaml adds routes without hiding the built-in ones
        assert CONFIGS_ROUTES[TaskType.REGRESSION]["loss"] == "plugin_l1_test"
        assert CONFIGS_ROUTES[TaskType.CLASSIFICATION]["loss"] == "cross_entropy"
        assert type(build_loss("regression")).__name__ == "RegressionLoss"
    finally:
        plugins._REGISTRY = before
    assert CONFIGS_ROUTES[TaskType.REGRESSION]["loss"] == "smooth_l1"
