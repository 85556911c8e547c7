"""Name -> class registry for pipeline stages.

Configs may name a stage by its short registered name (``_target_: RandomScroll``) or by its import
path (``_target_: pandemonium.attack.stages.create.RandomScroll``). Plugins register their own stages::

    from pandemonium.attack.stages.registry import register_stage

    @register_stage              # registered as the class's ``name``
    class MyStage(PipelineBase):
        name = "MyStage"

    @register_stage("fancy")     # or under an explicit name
    class Fancy(PipelineBase): ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

from hydra.utils import get_class

__all__ = ["STAGE_REGISTRY", "register_stage", "resolve_stage_class", "target_of"]

STAGE_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register_stage(name_or_cls: str | T | None = None) -> Any:
    """Register a stage class under its ``name`` (or an explicit name); usable with or without args."""

    def decorator(cls: T, name: str | None = None) -> T:
        key = name or getattr(cls, "name", None) or cls.__name__
        existing = STAGE_REGISTRY.get(key)
        if existing is not None and existing is not cls and target_of(existing) != target_of(cls):
            raise ValueError(
                f"stage name {key!r} is already registered by {target_of(existing)}; "
                f"cannot register {target_of(cls)} under the same name"
            )
        STAGE_REGISTRY[key] = cls
        return cls

    if isinstance(name_or_cls, type):
        return decorator(name_or_cls)

    def named(cls: T) -> T:
        return decorator(cls, name_or_cls)  # type: ignore[arg-type]

    return named


def target_of(cls: type) -> str:
    """Import path of ``cls`` as used for ``_target_``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_stage_class(target: str) -> type:
    """Class for a registered short name or an import path; the error lists close registered names."""
    if target in STAGE_REGISTRY:
        return STAGE_REGISTRY[target]
    if "." not in target:
        _load_builtin_stages()
        if target in STAGE_REGISTRY:
            return STAGE_REGISTRY[target]
    else:
        try:
            return get_class(target)
        except Exception as err:  # hydra wraps import errors in several types
            raise ValueError(f"cannot import stage class {target!r}: {err}") from err
    close = difflib.get_close_matches(target, list(STAGE_REGISTRY), n=3)
    hint = f"; did you mean {close}?" if close else ""
    raise ValueError(
        f"unknown stage {target!r}{hint} (registered: {sorted(STAGE_REGISTRY)}; or give a full import path)"
    )


_OWN_MODULES = (
    "pandemonium.attack.stages.create",
    "pandemonium.attack.stages.frequency",
    "pandemonium.attack.stages.softproof",
    "pandemonium.attack.stages.model",
)
# built by another engineer; a missing or broken module must not break short names of the others
_OPTIONAL_MODULES = (
    "pandemonium.attack.stages.implant",
    "pandemonium.attack.stages.augment",
    "pandemonium.attack.stages.fused",
)


def _load_builtin_stages() -> None:
    """Import the built-in stage modules so their ``@register_stage`` decorators have run."""
    import importlib
    import logging

    for module in _OWN_MODULES:
        importlib.import_module(module)
    for module in _OPTIONAL_MODULES:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - reported, and the other stages stay usable
            logging.getLogger(__name__).debug("stage module %s not loaded: %s", module, err)


def registered_stages() -> dict[str, Callable[..., Any]]:
    """A copy of the registry after loading the built-in stages."""
    _load_builtin_stages()
    return dict(STAGE_REGISTRY)
