"""Replay check of a whole pipeline: run it, replay it from its sample, name the first stage that differs.

The trainer calls :func:`check_replay` once before the first optimisation step, so a stage that cannot
replay its conditions fails in seconds with its name, instead of after a long fit at the first
evaluation (whose fixed conditions and re-rendered rows rely on exact replay)::

    from pandemonium.attack.replay import check_replay

    check_replay(pipeline, patch.expand(2, -1, -1, -1))   # raises StageError naming the stage

Random streams (every stage generator and the global torch / numpy / ``random`` states) are restored
afterwards, so calling it does not change what the run draws later.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pandemonium.attack.stages.base import StageError

__all__ = ["check_replay", "first_difference", "preserved_random_state"]


def _stages(pipeline: nn.Module) -> list[tuple[str, nn.Module]]:
    prefixes = getattr(pipeline, "prefixes", None)
    stages = getattr(pipeline, "stages", None)
    if prefixes is not None and stages is not None:
        return list(zip(prefixes, stages))
    return [(getattr(pipeline, "name", type(pipeline).__name__), pipeline)]


@contextmanager
def preserved_random_state(pipeline: nn.Module) -> Iterator[None]:
    """Restore every stage generator, the global RNGs and each stage's last sample on exit."""
    generators: list[tuple[nn.Module, torch.Generator, Tensor]] = []
    last: list[tuple[nn.Module, str, Any]] = []
    for module in pipeline.modules():
        generator = module.__dict__.get("_generator")
        if isinstance(generator, torch.Generator):
            generators.append((module, generator, generator.get_state()))
        for attr in ("_generator", "_last_params", "_last_batch_size", "lastsample"):
            # a generator not yet created (None) is created lazily from the seed: put None back
            if attr in module.__dict__:
                last.append((module, attr, module.__dict__[attr]))
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        for module, attr, value in last:
            module.__dict__[attr] = value
        for _, generator, state in generators:
            generator.set_state(state)


def first_difference(a: Any, b: Any, path: str = "output") -> str | None:
    """Where two stage outputs differ (``None`` if equal bit for bit): tensors, dicts, lists, scalars."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return f"{path}: {type(a).__name__} vs {type(b).__name__}"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path}: shape/dtype {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
        if not torch.equal(a, b):
            if a.is_floating_point():
                worst = float((a.detach() - b.detach()).abs().nan_to_num(float("inf")).max())
                return f"{path}: values differ (largest difference {worst:.3g})"
            return f"{path}: values differ"
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{path}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for key in a:
            found = first_difference(a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (u, v) in enumerate(zip(a, b)):
            found = first_difference(u, v, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return None if np.array_equal(np.asarray(a), np.asarray(b)) else f"{path}: arrays differ"
    try:
        return None if bool(a == b) else f"{path}: {a!r} vs {b!r}"
    except Exception:  # noqa: BLE001 - objects without a usable ==: compare identity
        return None if a is b else f"{path}: {type(a).__name__} objects differ"


def _trace(pipeline: nn.Module, x: Any, **forward_kwargs: Any) -> list[Any]:
    """Each stage's ``(y, kwargs)`` for one pipeline call (captured by forward hooks)."""
    outputs: list[Any] = []
    handles = [
        stage.register_forward_hook(lambda _m, _a, out, sink=outputs: sink.append(out))
        for _, stage in _stages(pipeline)
    ]
    try:
        pipeline(x, **forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return outputs


def _compare(pipeline: nn.Module, first: list[Any], second: list[Any], what: str) -> None:
    for (prefix, _), a, b in zip(_stages(pipeline), first, second):
        found = first_difference(a, b)
        if found:
            raise StageError(
                f"stage {prefix}: {what} did not reproduce its output bit for bit ({found}); every stage "
                "must replay exactly from get_last_sample_as_dict() -- draw random values only in the "
                "stage's sample (pandemonium.testing.check_stage(stage, x) shows which rule it breaks)"
            )
    if len(first) != len(second):
        raise StageError(f"pipeline: {what} ran {len(second)} stages, the first call {len(first)}")


@torch.no_grad()
def check_replay(
    pipeline: nn.Module, x: Any, evaluate_modes: Sequence[bool] = (False, True), **kwargs: Any
) -> None:
    """Raise :class:`StageError` naming the first stage whose output does not replay bit for bit.

    For each ``evaluate`` in ``evaluate_modes``: run ``pipeline(x)``, take
    ``pipeline.get_last_sample_as_dict()``, replay ``params=`` that sample and compare every stage's
    output; then compare ``control=True`` right after the replay with ``control=True, params=sample``.
    ``kwargs`` go to every call (e.g. targets a stage reads). Random streams and last samples are
    restored afterwards (see :func:`preserved_random_state`).
    """
    if not hasattr(pipeline, "get_last_sample_as_dict"):
        raise StageError(f"check_replay: {type(pipeline).__name__} has no get_last_sample_as_dict()")
    with preserved_random_state(pipeline):
        for evaluate in evaluate_modes:
            mode = f"evaluate={evaluate}"
            drawn = _trace(pipeline, x, evaluate=evaluate, **kwargs)
            sample = {k: np.array(v, copy=True) for k, v in pipeline.get_last_sample_as_dict().items()}
            replayed = _trace(pipeline, x, evaluate=evaluate, params=sample, **kwargs)
            _compare(pipeline, drawn, replayed, f"{mode}, params=get_last_sample_as_dict()")
            control = _trace(pipeline, x, control=True, evaluate=evaluate, **kwargs)
            control_replayed = _trace(pipeline, x, control=True, evaluate=evaluate, params=sample, **kwargs)
            _compare(pipeline, control, control_replayed, f"{mode}, control=True with params=the sample")
