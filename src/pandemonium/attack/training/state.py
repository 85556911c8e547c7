"""The trainer's checkpoint state: what :meth:`PatchTrainer.state_dict` holds and how it comes back.

Callbacks' states sit under ``state["callbacks"][key]``; the key is the callback's ``state_key``
(its class name), with ``#2``, ``#3`` for later callbacks of the same key.

>>> class A: ...
>>> callback_keys([A(), A()])
['A', 'A#2']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pandemonium.attack.checkpoint import get_rng_state, set_rng_state
from pandemonium.attack.training.config import TrainerSettingError

if TYPE_CHECKING:
    from pandemonium.attack.training.trainer import PatchTrainer

__all__ = ["callback_keys", "restore_state", "trainer_state"]

log = logging.getLogger(__name__)


def callback_keys(callbacks: Sequence[Any]) -> list[str]:
    """Unique checkpoint keys of ``callbacks`` (in order)."""
    seen: dict[str, int] = {}
    keys = []
    for callback in callbacks:
        key = getattr(callback, "state_key", type(callback).__qualname__)
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def trainer_state(t: PatchTrainer) -> dict[str, Any]:
    """Step, patch, optimiser, schedule, history, RNG streams and every callback's state."""
    return {
        "step": t.step,
        "should_stop": t.should_stop,
        "patch": {k: v.detach().cpu().clone() for k, v in t.patch.state_dict().items()},
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.scheduler.state_dict(),
        "history": t.history,
        "evals": t.evals,
        "rng": get_rng_state(t.pipeline, t.patch),
        "run_id": t.run_id,
        "steps_total": t.max_steps,
        "settings": t.hparams(),
        **({"shards": t.sharding.state_dict()} if t.sharding is not None else {}),
        "callbacks": {  # stateless callbacks (an empty state) are left out
            key: state for key, state in (
                (key, callback.state_dict() if hasattr(callback, "state_dict") else {})
                for key, callback in zip(callback_keys(t.callbacks), t.callbacks)
            ) if state
        },
    }


def restore_state(t: PatchTrainer, state: Mapping[str, Any]) -> None:
    """Put a :func:`trainer_state` back onto ``t`` (its optimiser and schedule already built)."""
    t.patch.load_state_dict(state["patch"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    t.step = int(state["step"])
    t.should_stop = bool(state.get("should_stop", False))
    t.history, t.evals = list(state["history"]), list(state["evals"])
    t.run_id = state.get("run_id")
    set_rng_state(state["rng"], t.pipeline, t.patch)
    if t.sharding is not None:  # after "rng": this process's shard streams win
        t.sharding.load_state_dict(t, state.get("shards"))
    elif state.get("shards", {}).get("shards", 1) != 1:
        raise TrainerSettingError(
            f"PatchTrainer: the checkpoint was written by a fit on {state['shards']['shards']} devices; "
            "resume it with the same devices"
        )
    saved = dict(state.get("callbacks") or {})
    for key, callback in zip(callback_keys(t.callbacks), t.callbacks):
        if key in saved and hasattr(callback, "load_state_dict"):
            callback.load_state_dict(saved.pop(key))
        elif getattr(callback, "state_dict", lambda: {})():
            log.warning("the checkpoint holds no state for callback %s; it starts afresh", key)
    if saved:
        log.warning("the checkpoint holds state of callbacks this trainer lacks: %s", sorted(saved))
