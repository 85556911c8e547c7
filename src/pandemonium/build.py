"""The one way to build objects from config: ``_target_`` + kwargs, with one error format.

Every config node that names a class or factory (stages, losses, metrics, optimisers, loaders,
augmentations, executors, schedulers, models) goes through :func:`instantiate`, so a bad ``_target_``
or a bad keyword always reads the same: ``<what>: cannot build <target>: <reason>``.

>>> instantiate({"_target_": "fractions.Fraction", "numerator": 3, "denominator": 4}, what="example")
Fraction(3, 4)
>>> instantiate({"_target_": "Net"}, what="model", registry={"Net": dict})
{}
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from pandemonium.errors import ConfigError
from pandemonium.plain import to_plain

__all__ = ["BuildError", "import_target", "instantiate"]


class BuildError(ConfigError):
    """A ``_target_`` that does not import, or a constructor that refuses its kwargs."""


def import_target(target: str, *, what: str, registry: Mapping[str, Any] | None = None) -> Any:
    """The callable a ``_target_`` names: a short name from ``registry`` or a dotted import path."""
    if registry is not None and target in registry:
        return registry[target]
    if "." not in target:
        known = sorted(registry or {})
        close = difflib.get_close_matches(target, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        listed = f" (registered: {', '.join(known)})" if known else ""
        raise BuildError(f"{what}: unknown _target_ {target!r}{hint}{listed}; or give a full import path")
    from hydra.utils import get_object

    try:
        return get_object(target)
    except Exception as err:  # hydra wraps ImportError and AttributeError alike
        cause = err.__cause__ or err
        raise BuildError(f"{what}: cannot import _target_ {target!r}: {_first_line(cause)}") from None


def instantiate(
    spec: Any,
    *,
    what: str,
    registry: Mapping[str, Any] | None = None,
    optional: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Build ``spec["_target_"](**rest, **kwargs)``.

    Args:
        spec: a mapping (or OmegaConf node) with ``_target_``; nested mappings with a ``_target_``
            are built first, depth first, so configs compose.
        what: names the thing for the error message ("loss of preset 'x' (task 'y')").
        registry: short names accepted besides dotted import paths (e.g. the stage registry).
        optional: kwargs passed only when the callable accepts them (e.g. ``num_classes`` for metrics).
        kwargs: kwargs that override the spec's.
    """
    plain = to_plain(spec) if not isinstance(spec, Mapping) or _has_omegaconf(spec) else dict(spec)
    if not isinstance(plain, dict) or "_target_" not in plain:
        raise BuildError(f"{what}: config {plain!r} has no _target_")
    plain = dict(plain)
    target_name = str(plain.pop("_target_"))
    target = import_target(target_name, what=what, registry=registry)
    args = {k: _build_nested(v, what=f"{what} -> {k}", registry=registry) for k, v in plain.items()}
    args.update(kwargs)
    if optional:
        accepted = _accepted(target)
        args.update({k: v for k, v in optional.items() if k not in args and (accepted is None or k in accepted)})
    try:
        return target(**args)
    except Exception as err:
        raise BuildError(f"{what}: cannot build {target_name!r}: {_first_line(err)}") from err


def _build_nested(value: Any, *, what: str, registry: Mapping[str, Any] | None) -> Any:
    if isinstance(value, Mapping):
        if "_target_" in value:
            return instantiate(value, what=what, registry=registry)
        return {k: _build_nested(v, what=f"{what}.{k}", registry=registry) for k, v in value.items()}
    if isinstance(value, list):
        return [_build_nested(v, what=f"{what}[{i}]", registry=registry) for i, v in enumerate(value)]
    return value


def _accepted(target: Callable[..., Any]) -> set[str] | None:
    """Keyword names ``target`` accepts; ``None`` when it takes ``**kwargs`` or has no signature."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _has_omegaconf(value: Any) -> bool:
    return type(value).__module__.startswith("omegaconf")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
