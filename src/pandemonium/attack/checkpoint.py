"""Atomic training checkpoints and capture/restore of every random state a fit depends on.

A checkpoint holds the patch, optimiser, schedule, step, best patch, early-stopping state and every
RNG state (torch global, each stage's ``torch.Generator``, python ``random``, numpy's global RNG),
so a fit resumed from it ends with the same patch, bit for bit, as an uninterrupted fit on CPU.

>>> import torch
>>> gens = find_generators(torch.nn.Linear(2, 2))
>>> gens
{}
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_VERSION",
    "find_generators",
    "get_rng_state",
    "isolated_rng",
    "load_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_VERSION = 1


def _generators_in(obj: Any, prefix: str, out: dict[str, torch.Generator]) -> None:
    if isinstance(obj, torch.Generator):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _generators_in(v, f"{prefix}[{k}]", out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _generators_in(v, f"{prefix}[{i}]", out)


def find_generators(*roots: Any) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` held by the modules below ``roots`` (attributes, lists, dicts).

    Keys are stable ``<root index>.<module path>.<attribute>`` names, so states saved by one process
    are restored onto the same generators in another. Stages keep their generator as a plain
    attribute (a Generator is not a parameter or buffer), so walking ``__dict__`` finds them
    without any cooperation from the stage.
    """
    out: dict[str, torch.Generator] = {}
    for i, root in enumerate(roots):
        if root is None:
            continue
        if isinstance(root, torch.nn.Module):
            for path, module in root.named_modules():
                if hasattr(module, "set_seed") and isinstance(getattr(type(module), "generator", None), property):
                    # stages create their generator lazily; create it now so a snapshot taken before
                    # the first draw still covers it
                    _ = module.generator
                for attr, value in vars(module).items():
                    if attr.startswith("_") and attr in ("_parameters", "_buffers", "_modules"):
                        continue
                    _generators_in(value, f"{i}.{path}.{attr}", out)
        else:
            _generators_in(root, f"{i}", out)
    # one generator reachable under two names is saved once
    seen: dict[int, str] = {}
    unique: dict[str, torch.Generator] = {}
    for name, gen in out.items():
        if id(gen) not in seen:
            seen[id(gen)] = name
            unique[name] = gen
    return unique


def get_rng_state(*roots: Any) -> dict[str, Any]:
    """Snapshot of torch's global RNG (CPU and CUDA), python, numpy and every stage generator."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "generators": {k: g.get_state() for k, g in find_generators(*roots).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], *roots: Any) -> None:
    """Restore a :func:`get_rng_state` snapshot; a generator missing on either side is an error."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gens = find_generators(*roots)
    saved = state["generators"]
    if set(gens) != set(saved):
        raise ValueError(
            "checkpoint RNG states do not match this pipeline's generators: "
            f"missing in checkpoint {sorted(set(gens) - set(saved))}, "
            f"unknown in pipeline {sorted(set(saved) - set(gens))}"
        )
    for k, g in gens.items():
        g.set_state(saved[k])


@contextlib.contextmanager
def isolated_rng(*roots: Any, seed: int | None = None) -> Iterator[None]:
    """Run a block without touching any RNG stream the training loop uses.

    All states are restored on exit. With ``seed``, every generator (and the global streams) is
    reseeded from ``seed`` inside the block, so e.g. the fixed evaluation conditions depend only on
    the evaluation seed, not on how far training has gone.
    """
    saved = get_rng_state(*roots)
    try:
        if seed is not None:
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (2**32))
            for i, (_, g) in enumerate(sorted(find_generators(*roots).items())):
                g.manual_seed((seed * 1_000_003 + i) % (2**63))
        yield
    finally:
        set_rng_state(saved, *roots)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` with ``torch.save`` atomically: a temporary file in the same folder, then rename.

    A reader (or a kill at any moment) sees either the previous checkpoint or the new one, never a
    half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save({"version": CHECKPOINT_VERSION, **state}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (it holds numpy RNG state, hence the
    full unpickler: only load checkpoints you wrote)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{str(path)!r} is not a pandemonium trainer checkpoint (version {CHECKPOINT_VERSION})")
    return state
