"""The stage contract checker for plugin authors: ``check_stage(stage, x)`` (losses: :mod:`pandemonium.testing.losses`).

::

    from pandemonium.testing import check_stage

    def test_my_stage():
        check_stage(MyStage(foo=1), torch.rand(4, 3, 16, 16))

``check_stage`` asserts the stage contract of DESIGN.md ("Stage") and fails with a message naming the
stage and the broken rule. A stage written exactly the seed's way (it overrides ``forward``, keeps its
own last sample, e.g. in a ``lastsample`` attribute, and draws its own random numbers, even from
global RNG state) passes when it honours ``params=`` and ``control=True``; so does a stage written for
electricmayhem (``_forward_single``, ``sample``, ``lastsample``, ``params={}``).

What the seed asks, checked here: ``forward`` returns ``(y, kwargs)`` with the incoming kwargs;
``get_last_sample_as_dict()`` gives one list / 1-D array of length batch per key; ``control=True``
repeats the previous call's conditions; ``params`` holds the constructor kwargs.

What pandemonium asks beyond the seed (each failure message says so):

1. replay is exact: ``forward(x, params=get_last_sample_as_dict())`` gives the same tensor bit for bit,
   also from plain lists (a JSON round trip), and ``control=True`` after it uses the replayed values;
2. ``control=True`` draws nothing new; for an ``"implant"`` stage (``role = "implant"``, or the older
   ``consumes_patch = True``) the control output does not depend on the patch;
3. ``params`` is JSON-serialisable and ``type(stage)(**stage.params)``, given the same sample, gives
   the same output (random draws are compared under the replayed sample, not a shared seed);
4. tensors live in parameters or buffers, so they follow ``.to(device)`` / ``.double()`` (the last
   sample -- ``lastsample`` or a name in ``transient_attributes`` -- may stay a plain attribute);
5. ``get_description()`` is non-empty markdown and ``validate(x)`` returns ``True`` on a good batch;
6. a stage whose ``params`` has ``keys`` touches only the selected patches of a dict input and names
   unknown keys in its error.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pandemonium.attack.stages.base import stage_convention
from pandemonium.attack.stages.contract import StageError, role_of

__all__ = ["StageContractError", "check_stage"]


class StageContractError(AssertionError):
    """A stage broke the contract checked by :func:`check_stage`."""


def _fail(stage: nn.Module, message: str) -> StageContractError:
    name = getattr(stage, "name", type(stage).__name__)
    return StageContractError(f"check_stage({name}): {message}")


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (
            isinstance(a, Tensor)
            and isinstance(b, Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def _batch_size(x: Any) -> int:
    if isinstance(x, Tensor):
        return int(x.shape[0])
    if isinstance(x, Mapping):
        for value in x.values():
            if isinstance(value, Tensor):
                return int(value.shape[0])
    raise TypeError(f"check_stage: x must be a tensor or a dict of tensors, got {type(x).__name__}")


def _other_patch(x: Any, generator: torch.Generator) -> Any:
    """A different input of the same shape (for "control ignores the patch")."""
    if isinstance(x, Tensor):
        noise = torch.rand(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
        return 1.0 - x * 0.5 - noise * 0.5 if x.is_floating_point() else x
    return {k: _other_patch(v, generator) for k, v in x.items()}


def _map_tensors(x: Any, fn) -> Any:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: _map_tensors(v, fn) for k, v in x.items()}
    return x


def _call(stage: nn.Module, x: Any, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    try:
        out = stage(x, **kwargs)
    except StageError:
        raise
    except Exception as err:
        raise _fail(
            stage, f"forward({', '.join(f'{k}=...' for k in kwargs)}) raised {type(err).__name__}: {err}"
        ) from err
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
        raise _fail(stage, f"forward must return (y, kwargs); got {type(out).__name__}")
    return out


def _reseed(stage: nn.Module, seed: int, position: int) -> None:
    if hasattr(stage, "set_seed"):
        stage.set_seed(seed, position)


def _tensors_in_plain_attributes(module: nn.Module) -> list[str]:
    """Tensors a module keeps outside ``_parameters`` / ``_buffers`` (they would not move with it)."""
    found = []
    for mod_name, mod in module.named_modules():
        transient = {"lastsample", *getattr(mod, "transient_attributes", ())}
        for attr, value in vars(mod).items():
            if attr in ("_parameters", "_buffers", "_modules") or attr in transient:
                continue
            values = (
                value.values()
                if isinstance(value, Mapping)
                else value
                if isinstance(value, (list, tuple))
                else [value]
            )
            if any(isinstance(v, Tensor) for v in values):
                found.append(f"{mod_name + '.' if mod_name else ''}{attr}")
    return found


def check_stage(
    stage: nn.Module,
    x: Tensor | dict[str, Tensor],
    rebuild_kwargs: Mapping[str, Any] | None = None,
    evaluate_modes: Sequence[bool] = (False, True),
    check_dict: bool = True,
    check_dtype_move: bool = True,
    **kwargs: Any,
) -> None:
    """Assert the stage contract on the batch ``x``; raise :class:`StageContractError` naming the rule.

    Checks, for ``evaluate`` in ``evaluate_modes``: ``forward`` returns ``(y, kwargs)`` and keeps the
    incoming kwargs; every sampled value is a list / 1-D array of length batch; ``params=`` with the
    last sample reproduces the output bit for bit (also after the stage drew again, and from plain
    lists); ``control=True`` reuses the previous conditions (and, for an ``"implant"`` stage, does not
    depend on the patch). Then: ``params`` is JSON-serialisable and ``type(stage)(**params)`` replaying
    the same sample gives the same output; ``.double()`` / ``.to("meta")`` move every tensor (none
    hides in plain attributes); a dict of two patches with ``keys=[...]`` touches only the selected
    one; unknown keys give a clear error. The module docstring lists what goes beyond the seed.

    ``rebuild_kwargs`` override params when rebuilding (e.g. ``{"model": net}`` for an in-memory
    model); extra ``kwargs`` are passed to every forward call (e.g. targets). A stage with
    ``set_seed`` is re-seeded with its own seed and position at the end, so its random stream restarts.
    """
    batch = _batch_size(x)
    generator = torch.Generator().manual_seed(12345)
    marker = object()
    for evaluate in evaluate_modes:
        mode = f"evaluate={evaluate}"
        incoming = {**kwargs, "_check_stage_marker": marker}
        y, out_kwargs = _call(stage, x, evaluate=evaluate, **incoming)
        if out_kwargs.get("_check_stage_marker") is not marker:
            raise _fail(
                stage, f"{mode}: incoming kwargs must be passed through; '_check_stage_marker' was dropped"
            )
        missing = [k for k in kwargs if k not in out_kwargs]
        if missing:
            raise _fail(stage, f"{mode}: incoming kwargs {missing} missing from the returned kwargs")

        sample = stage.get_last_sample_as_dict()
        if not isinstance(sample, Mapping):
            raise _fail(stage, f"get_last_sample_as_dict() must return a dict, got {type(sample).__name__}")
        for key, value in sample.items():
            if not isinstance(key, str):
                raise _fail(stage, f"sample key {key!r} is not a str")
            if (
                not isinstance(value, (list, np.ndarray))
                or np.asarray(value).ndim != 1
                or len(value) != batch
            ):
                shape = (
                    np.asarray(value).shape if isinstance(value, (list, np.ndarray)) else type(value).__name__
                )
                raise _fail(
                    stage,
                    f"{mode}: sampled {key!r} must be a list / 1-D numpy array of length batch={batch}, got {shape}",
                )
        sample_copy = {k: np.array(v, copy=True) for k, v in sample.items()}

        # control right after the call: the same conditions as that call
        y_control, _ = _call(stage, x, control=True, evaluate=evaluate, **kwargs)
        if role_of(stage) == "implant":
            y_control_other, _ = _call(
                stage, _other_patch(x, generator), control=True, evaluate=evaluate, **kwargs
            )
            if not _equal(y_control, y_control_other):
                raise _fail(
                    stage,
                    f"{mode}: control=True output changes with the patch; a control batch of an implant stage "
                    "must not contain it",
                )
        elif not _equal(y_control, y):
            raise _fail(
                stage,
                f"{mode}: control=True must apply the same conditions as the previous call (for stages that do "
                "not implant the patch the output equals that call's output)",
            )
        if not _equal(stage.get_last_sample_as_dict(), sample_copy):
            raise _fail(
                stage,
                f"{mode}: control=True must not draw new random values (get_last_sample_as_dict() changed); "
                "it repeats the previous call's conditions",
            )

        # replay, after the generator has moved on
        _call(stage, x, evaluate=evaluate, **kwargs)
        y_replay, _ = _call(stage, x, evaluate=evaluate, params=sample_copy, **kwargs)
        if not _equal(y, y_replay):
            raise _fail(
                stage,
                f"{mode}: forward(x, params=get_last_sample_as_dict()) did not reproduce the output exactly "
                "(pandemonium needs bit-for-bit replay: every random value the output depends on must be in "
                "the sample, and params= must be used instead of drawing)",
            )
        y_listed, _ = _call(
            stage,
            x,
            evaluate=evaluate,
            params={k: np.asarray(v).tolist() for k, v in sample_copy.items()},
            **kwargs,
        )
        if not _equal(y, y_listed):
            raise _fail(
                stage, f"{mode}: replay from plain lists (JSON round trip) differs from the original output"
            )
        # control after a replay reuses the replayed conditions
        y_control_replay, _ = _call(stage, x, control=True, evaluate=evaluate, **kwargs)
        if not _equal(y_control_replay, y_control):
            raise _fail(stage, f"{mode}: control=True after params=... must use those params")

    description = stage.get_description() if hasattr(stage, "get_description") else ""
    if not isinstance(description, str) or not description:
        raise _fail(stage, f"get_description() must return a non-empty markdown str, got {description!r}")
    if hasattr(stage, "validate"):
        verdict = stage.validate(x)
        if verdict is not True:
            raise _fail(stage, f"validate(x) must return True for a good batch, got {verdict!r}")
    seed, position = getattr(stage, "seed", 0), getattr(stage, "position", 0)
    _check_params_rebuild(stage, x, rebuild_kwargs, kwargs, evaluate_modes)
    if check_dtype_move:
        _check_moves(stage, x, kwargs)
    if check_dict and isinstance(x, Tensor) and not getattr(stage, "handles_dicts", False):
        _check_dict_input(stage, x, rebuild_kwargs, kwargs, generator)
    _reseed(stage, seed, position)  # the checks re-seeded it; leave it with its seed, stream restarted


def _rebuild(stage: nn.Module, rebuild_kwargs: Mapping[str, Any] | None, **override: Any) -> nn.Module:
    params = getattr(stage, "params", None)
    if not isinstance(params, Mapping):
        raise _fail(stage, f"params must be a dict of constructor kwargs, got {type(params).__name__}")
    try:
        json.dumps(params)
    except (TypeError, ValueError) as err:
        raise _fail(stage, f"params are not JSON-serialisable: {err}") from err
    kwargs = {**json.loads(json.dumps(params)), **(rebuild_kwargs or {}), **override}
    try:
        return type(stage)(**kwargs)
    except Exception as err:
        raise _fail(stage, f"type(stage)(**stage.params) failed: {type(err).__name__}: {err}") from err


def _check_params_rebuild(stage, x, rebuild_kwargs, kwargs, evaluate_modes) -> None:
    rebuilt = _rebuild(stage, rebuild_kwargs)
    rebuilt.train(stage.training)
    for evaluate in evaluate_modes:
        y_a, _ = _call(stage, x, evaluate=evaluate, **kwargs)
        sample = {k: np.asarray(v).tolist() for k, v in stage.get_last_sample_as_dict().items()}
        replay = {"params": sample} if sample else {}  # seed-style stages may only take params=None
        y_b, _ = _call(rebuilt, x, evaluate=evaluate, **replay, **kwargs)
        if not _equal(y_a, y_b):
            raise _fail(
                stage,
                f"evaluate={evaluate}: type(stage)(**stage.params), replaying the original's "
                "get_last_sample_as_dict(), gives a different output; params must hold every constructor "
                "argument the output depends on",
            )


def _check_moves(stage, x, kwargs) -> None:
    leftovers = _tensors_in_plain_attributes(stage)
    if leftovers:
        raise _fail(
            stage,
            f"tensors kept in plain attributes {leftovers} do not move with .to(device); register them "
            "as buffers (register_buffer) or parameters (the last sample may stay a plain attribute: name it "
            "lastsample or list it in the class attribute transient_attributes)",
        )
    try:
        moved = copy.deepcopy(stage)
    except Exception as err:
        raise _fail(stage, f"copy.deepcopy(stage) failed: {err}") from err
    moved.to("meta")
    stuck = [n for n, t in [*moved.named_parameters(), *moved.named_buffers()] if t.device.type != "meta"]
    if stuck:
        raise _fail(stage, f".to('meta') left {stuck} behind")
    double = copy.deepcopy(stage).double()
    x_double = _map_tensors(x, lambda t: t.double() if t.is_floating_point() else t)
    y, _ = _call(double, x_double, **kwargs)
    bad = []

    def visit(value: Any, path: str) -> None:
        if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != torch.float64:
            bad.append(f"{path}: {value.dtype}")
        elif isinstance(value, Mapping):
            for k, v in value.items():
                visit(v, f"{path}[{k!r}]")

    visit(y, "y")
    if bad:
        raise _fail(
            stage,
            f"after .double() and a float64 input the output is not float64 ({bad}): a tensor did not move",
        )


def _check_dict_input(stage, x, rebuild_kwargs, kwargs, generator) -> None:
    params = getattr(stage, "params", {})
    if "keys" not in params:
        return  # the stage does not take keys (a user stage written without them)
    other = _other_patch(x, generator)
    selected = _rebuild(stage, rebuild_kwargs, keys=["a"])
    _reseed(selected, 7, 1)
    _reseed(stage, 7, 1)
    dict_input = {"a": x, "b": other}
    out, _ = _call(selected, dict_input, **kwargs)
    if not isinstance(out, Mapping) or set(out) != {"a", "b"}:
        raise _fail(
            stage, f"dict input {{'a', 'b'}} must give a dict with the same keys, got {type(out).__name__}"
        )
    if not _equal(out["b"], other):
        raise _fail(stage, "keys=['a'] must leave patch 'b' untouched")
    sample = selected.get_last_sample_as_dict()
    split = stage_convention(stage) == "sample/apply"
    bad_keys = [k for k in sample if not k.startswith("a/")]
    if split and bad_keys:
        raise _fail(
            stage, f"dict-mode sample keys must be prefixed by the patch key ('a/...'), got {bad_keys}"
        )
    replay, _ = _call(selected, dict_input, **({"params": sample} if sample else {}), **kwargs)
    if not _equal(replay, out):
        raise _fail(stage, "dict input: replay from get_last_sample_as_dict() differs")
    if split or not sample:
        # the same conditions on the bare tensor (the per-patch prefix stripped) give the same output
        single = {k[len("a/") :]: v for k, v in sample.items()}
        y_single, _ = _call(stage, x, **({"params": single} if single else {}), **kwargs)
        if not _equal(y_single, out["a"]):
            raise _fail(stage, "dict input: the selected patch must be processed exactly like a single tensor")
    wrong = _rebuild(stage, rebuild_kwargs, keys=["not_a_patch"])
    try:
        wrong(dict_input, **kwargs)
    except StageError as err:
        if "not_a_patch" not in str(err):
            raise _fail(stage, f"the error for unknown keys must name the key; got: {err}") from err
    else:
        raise _fail(stage, "keys naming a patch that is not in the input must raise StageError")
