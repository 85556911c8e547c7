"""Plugins: installed packages that extend pandemonium through the entry point group ``pandemonium.plugins``.

An entry point names either a callable ``register(registry)`` or a module with a ``register``
function. The registry offers::

    registry.add_config_path(path)                      # a folder with config groups (mode/..., tasks/...)
    registry.add_scheduler(name, "pkg.mod.MyScheduler")  # listed by `pandemonium --help`
    registry.add_task_creator(name, func)                # like @register_taskcreator(name)
    registry.add_modality("HEATMAP", "heatmap", loader_cls=..., verifier=..., geometry="dense")
    registry.add_task_type(TaskTypeSpec(name="heatmap_regression", ...))  # a whole task type
    registry.add_stage("my_pkg.stages.MyStage")         # or the class; usable as `_target_: MyStage`
    registry.add_artifact_key("heatmaps", "{proj_path}/HEATMAPS/{task_name}/{file_name}")

Config folders added by plugins are searched for every group (``mode``, ``tasks``, ``loss``,
``metrics``, ``loaders``, ``attack``, ...), after a user folder and the built-in tree.

In ``pyproject.toml`` of the plugin package::

    [project.entry-points."pandemonium.plugins"]
    my_plugin = "my_plugin:register"

Registration is two-phased so ``pandemonium --help`` stays fast: :func:`load_plugins` runs every
``register`` (which only records), :meth:`PluginRegistry.activate` applies the records to the tasks
layer and the FileManager when a mode actually runs. A failing plugin is reported by name and skipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pandemonium.errors import ConfigError, PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pandemonium.plugins"


@dataclass
class PluginRegistry:
    """What loaded plugins contributed. One registry per process (see :func:`load_plugins`)."""

    config_paths: list[Path] = field(default_factory=list)
    schedulers: dict[str, str] = field(default_factory=dict)
    task_creators: dict[str, tuple[Callable[..., Any], dict[str, Any]]] = field(default_factory=dict)
    modalities: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_types: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, type | str] = field(default_factory=dict)
    artifact_keys: dict[str, str] = field(default_factory=dict)
    #: plugin name -> version of its distribution ("?" when unknown)
    loaded: dict[str, str] = field(default_factory=dict)
    #: plugin name -> one-line reason
    failed: dict[str, str] = field(default_factory=dict)
    #: plugin name -> what it registered (for --version and error messages)
    contributions: dict[str, list[str]] = field(default_factory=dict)
    activated: bool = False
    _current: str | None = None

    def _note(self, what: str) -> None:
        if self._current is not None:
            self.contributions.setdefault(self._current, []).append(what)

    def owner(self, what: str) -> str:
        """The plugin that registered ``what`` (e.g. ``"task:example_stripes"``)."""
        return next((name for name, items in self.contributions.items() if what in items), "<direct call>")

    @contextlib.contextmanager
    def _applying(self, what: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            raise PluginError(f"plugin {self.owner(what)!r}: could not register {what}: {exc}") from exc

    # -- the API plugins call ------------------------------------------------------------------
    def add_config_path(self, path: str | Path) -> None:
        """Add a config folder (searched after a user folder and the built-in tree)."""
        folder = Path(path).absolute()
        if not folder.is_dir():
            raise FileNotFoundError(f"config path {folder} does not exist")
        if folder not in self.config_paths:
            self.config_paths.append(folder)
        self._note(f"configs:{folder}")

    def add_scheduler(self, name: str, target: str | type) -> None:
        """Announce a scheduler (its mode yaml still comes from a config path)."""
        self.schedulers[name] = target if isinstance(target, str) else f"{target.__module__}.{target.__qualname__}"
        self._note(f"scheduler:{name}")

    def add_task_creator(self, name: str, creator: Callable[..., Any], **meta: Any) -> None:
        """Register ``creator(writer, rng, **kwargs)`` for task ``name``; ``meta`` are the keyword
        arguments of ``register_taskcreator`` (``task_type``, ``class_names``, ``description``, ...)."""
        self.task_creators[name] = (creator, meta)
        self._note(f"task:{name}")

    def add_modality(self, name: str, value: str, loader_cls: type | None = None,
                     verifier: Callable[..., None] | None = None, geometry: str | None = None) -> None:
        """Add a ``Modality`` member, optionally with its default loader, verifier and ``Geometry``
        (``"image"``, ``"dense"``, ``"label_map"``, ``"boxes"``, ``"points"`` or ``"none"``): how it
        follows geometric augmentations on both the CPU and the GPU path."""
        self.modalities[value] = {"name": name, "loader_cls": loader_cls, "verifier": verifier, "geometry": geometry}
        self._note(f"modality:{value}")

    def add_task_type(self, spec: Any, value: str | None = None, requires: Iterable[Any] = (),
                      target: Any = None) -> None:
        """Add a task type: a whole :class:`pandemonium.tasktypes.TaskTypeSpec` (head, loss, metrics,
        predictions, attack preset, success metrics), or the bare form ``add_task_type(NAME, value,
        requires, target)`` for a type that is only created and loaded."""
        if isinstance(spec, str):
            self.task_types[str(value)] = {"name": spec, "requires": list(requires), "target": target}
            self._note(f"task_type:{value}")
            return
        self.task_types[spec.name] = spec
        self._note(f"task_type:{spec.name}")

    def add_stage(self, stage: type | str, name: str | None = None) -> None:
        """Register a pipeline stage class (or its import path, imported when a mode runs) under ``name``
        (default: the class's ``name``, else its class name), usable as ``_target_: <name>``."""
        key = name or (stage.rsplit(".", 1)[-1] if isinstance(stage, str) else
                       getattr(stage, "name", None) or stage.__name__)
        self.stages[key] = stage
        self._note(f"stage:{key}")

    def add_artifact_key(self, key: str, template: str) -> None:
        """Register a FileManager key (see ``FileManager.add_assignment_path``)."""
        from pandemonium.runs.file_manager import FileManager

        FileManager._check_assignment(key, template)
        self.artifact_keys[key] = template
        self._note(f"artifact:{key}")

    # -- applying ------------------------------------------------------------------------------
    def activate(self) -> PluginRegistry:
        """Apply modalities, task types, task creators and artifact keys (idempotent)."""
        if self.activated:
            return self
        from pandemonium.runs.file_manager import FileManager

        for key, template in self.artifact_keys.items():
            with self._applying(f"artifact:{key}"):
                FileManager.add_assignment_path(key, template)
        if self.modalities or self.task_types or self.task_creators:
            from pandemonium import tasktypes
            from pandemonium.tasks import attributes, creators, loaders, verifiers

            for value, spec in self.modalities.items():
                with self._applying(f"modality:{value}"):
                    modality = attributes.register_modality(spec["name"], value, geometry=spec.get("geometry"))
                    if spec["loader_cls"] is not None:
                        loaders.register_modality_loader(modality, spec["loader_cls"])
                    if spec["verifier"] is not None:
                        verifiers.MODALITY_VERIFIER_MAP[modality] = spec["verifier"]
            for value, spec in self.task_types.items():
                with self._applying(f"task_type:{value}"):
                    if isinstance(spec, tasktypes.TaskTypeSpec):
                        tasktypes.register_task_type(spec)
                    else:
                        attributes.register_task_type(spec["name"], value, spec["requires"], spec["target"])
            for name, (creator, meta) in self.task_creators.items():
                with self._applying(f"task:{name}"):
                    existing = creators.TASK_CREATORS.get(name)
                    if existing is None or existing.fn is not creator:
                        creators.register_taskcreator(name, **meta)(creator)
        if self.stages:
            from pandemonium.attack.stages.registry import register_stage

            for name, stage in self.stages.items():
                with self._applying(f"stage:{name}"):
                    cls = _import_path(stage) if isinstance(stage, str) else stage
                    register_stage(name)(cls)
        self.activated = True
        return self

    def deactivate(self) -> PluginRegistry:
        """Undo :meth:`activate` (tests; the process-wide registries are left as before activation)."""
        if not self.activated:
            return self
        from pandemonium import tasktypes
        from pandemonium.attack.stages.registry import STAGE_REGISTRY
        from pandemonium.runs.file_manager import FileManager
        from pandemonium.tasks import attributes, creators, loaders, verifiers

        for key in self.artifact_keys:
            FileManager.remove_assignment_path(key)
        for name in self.stages:
            STAGE_REGISTRY.pop(name, None)
        for name in self.task_creators:
            creators.TASK_CREATORS.pop(name, None)
        for value in self.task_types:
            tasktypes.unregister_task_type(value)
        for value in self.modalities:
            if value in attributes.Modality._value2member_map_:
                modality = attributes.Modality(value)
                loaders.DEFAULT_LOADERS.pop(modality, None)
                verifiers.MODALITY_VERIFIER_MAP.pop(modality, None)
                attributes.unregister_modality(modality)
        self.activated = False
        return self

    def describe(self) -> list[str]:
        """One line per plugin: name, version and what it added (or why it failed)."""
        lines = [f"{name} {version}: {', '.join(self.contributions.get(name, [])) or 'nothing registered'}"
                 for name, version in self.loaded.items()]
        lines += [f"{name}: FAILED ({reason})" for name, reason in self.failed.items()]
        return lines


def _import_path(path: str) -> Any:
    from pandemonium.build import import_target

    return import_target(path, what="plugin stage")


_REGISTRY: PluginRegistry | None = None

#: the config tree that ships with pandemonium
BUILTIN_CONFIGS = Path(__file__).resolve().parent / "configs"


def config_search_path() -> list[Path]:
    """Config folders, first match wins: ``PANDEMONIUM_CONFIGS_PATH`` (user copy), the built-in tree, then
    every plugin's folders (the order Hydra searches them in, see ``pandemonium.cli.main``)."""
    paths = []
    user = os.environ.get("PANDEMONIUM_CONFIGS_PATH")
    if user:
        paths += [Path(p).expanduser() for p in user.split(os.pathsep) if p]
    return [*paths, BUILTIN_CONFIGS, *load_plugins().config_paths]


def _read_yaml(path: Path, group: str, name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:
        raise ConfigError(f"configs/{group}/{name}.yaml ({path}) is malformed: {err}") from None
    return dict(data or {})


def load_group_config(group: str, name: str) -> dict[str, Any]:
    """``<configs>/<group>/<name>.yaml`` from the first folder of :func:`config_search_path` that has it,
    as a plain dict; :class:`ConfigError` names group and name."""
    for root in config_search_path():
        path = root / group / f"{name}.yaml"
        if path.is_file():
            return _read_yaml(path, group, name)
    raise ConfigError(f"no config {group}/{name}.yaml in {[str(p) for p in config_search_path()]}")


def merged_group_config(group: str, name: str) -> dict[str, Any]:
    """The top-level keys of ``<group>/<name>.yaml`` merged over every config folder (earlier folders win),
    so a plugin's ``loss/defaults.yaml`` adds its own entries without hiding the built-in ones."""
    merged: dict[str, Any] = {}
    for root in reversed(config_search_path()):
        path = root / group / f"{name}.yaml"
        if path.is_file():
            merged.update(_read_yaml(path, group, name))
    return merged


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_plugins(activate: bool = False, reload: bool = False,
                 entry_points: Iterable[Any] | None = None) -> PluginRegistry:
    """Load every ``pandemonium.plugins`` entry point once per process and return the registry.

    Args:
        activate: also apply the registrations (see :meth:`PluginRegistry.activate`).
        reload: forget the cached registry and load again (tests).
        entry_points: objects with ``name`` and ``load()`` to use instead of the installed ones.
    """
    global _REGISTRY
    if _REGISTRY is None or reload or entry_points is not None:
        registry = PluginRegistry()
        for ep in (_entry_points() if entry_points is None else entry_points):
            name = getattr(ep, "name", str(ep))
            registry._current = name
            try:
                target = ep.load()
                register = target if callable(target) else getattr(target, "register", None)
                if register is None:
                    raise TypeError("entry point is neither callable nor a module with register(registry)")
                register(registry)
                dist = getattr(ep, "dist", None)
                registry.loaded[name] = getattr(dist, "version", None) or "?"
            except Exception as exc:  # noqa: BLE001 - one broken plugin must not stop the others
                where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
                at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
                registry.failed[name] = f"{type(exc).__name__}: {exc}{at}"
                log.warning("pandemonium plugin %r failed to load: %s", name, registry.failed[name])
            finally:
                registry._current = None
        if entry_points is not None:
            return registry.activate() if activate else registry
        _REGISTRY = registry
    return _REGISTRY.activate() if activate else _REGISTRY
